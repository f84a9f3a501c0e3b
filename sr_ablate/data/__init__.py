"""Data: HR image files -> uint8 tensors -> degraded training pairs -> random patch batches.

``images`` decodes and checks files, ``sets`` says where images come from (built-in photos,
a folder, the standard sets, ``download``), ``pairs`` degrades them once, ``sampler`` cuts
the batches (``resident``: on the training device, ``data.on_device``). The names below are
the package's interface (``from sr_ablate import data``).
"""
from sr_ablate.data.images import (
                                   IMAGE_SUFFIXES,
                                   list_images,
                                   load_eval_images,
                                   load_images,
                                   read_image,
)
from sr_ablate.data.pairs import Pair, files_key, make_pairs, memo, training_pairs
from sr_ablate.data.sampler import Batches, batches
from sr_ablate.data.sets import (
                                   BENCHMARKS,
                                   BUILTIN_TRAIN,
                                   BUILTIN_VAL,
                                   builtin_dir,
                                   eval_set_paths,
                                   training_files,
)

__all__ = ["BENCHMARKS", "BUILTIN_TRAIN", "BUILTIN_VAL", "Batches", "IMAGE_SUFFIXES", "Pair",
           "batches", "builtin_dir", "eval_set_paths", "files_key", "list_images",
           "load_eval_images", "load_images", "make_pairs", "memo", "read_image",
           "training_files", "training_pairs"]
