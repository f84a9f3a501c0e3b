"""Trained models in MLflow: every finished run's MLflow Model (artifact path ``model``),
the registry (a name, its versions, the alias ``best``), and loading a model from any of
the addresses a user has: a ``final.pt`` file, a run id (``runs:/<id>``), or
``models:/<name>/<version>`` / ``models:/<name>@<alias>``.

The MLflow Model is a ``pyfunc``: ``mlflow.pyfunc.load_model("runs:/<id>/model")`` gives an
object whose ``predict(img)`` takes an (H, W, C) uint8 picture (C = 1 gray, 2 gray + alpha,
3 RGB, 4 RGBA) and returns the upscaled (H*s, W*s, C) uint8 picture, pre- and
post-processing included (``inference.upscale.upscale_array``). It carries the run's
``final.pt`` (``artifacts/final.pt``) and needs sr_ablate installed, not Hydra or configs.
"""
from __future__ import annotations

import inspect
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sr_ablate import UserError, __version__
from sr_ablate.inference.trained import Trained, from_checkpoint
from sr_ablate.inference.upscale import upscale_array
from sr_ablate.tracking.store import (
    MlflowException,
    ModelSignature,
    PythonModel,
    Schema,
    TensorSpec,
    client_for,
    save_model,
)

ARTIFACT = "model"  # the MLflow Model's artifact path in every run
WEIGHTS = "artifacts/final.pt"  # where the weights sit inside it
ALIAS = "best"
IMAGE = TensorSpec(np.dtype(np.uint8), (-1, -1, -1))  # H x W x C, any size


class SRModel(PythonModel):
    """The pyfunc of a trained SR model (see the module docstring)."""

    # MLflow's type-hint validation knows no numpy arrays (it warns on every save and load of
    # a model without hints, or with ``Any``): the explicit signature checks the input instead
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.trained = from_checkpoint(context.artifacts["weights"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return upscale_array(self.trained, np.asarray(model_input))


def log_model(log, weights: Path, trained: Trained) -> None:
    """Save ``weights`` (a final.pt) as run ``log``'s MLflow Model at ``model``.

    The signature is H x W x C uint8 in and out; the input example is an 8 x 8 RGB picture;
    the requirements are sr_ablate's own version and torch's (written out, not inferred,
    which would load the model once more in a subprocess per run). A model class defined
    outside sr_ablate (``--config-dir`` models) travels with its source file."""
    module = sys.modules.get(type(trained.model).__module__)
    code = [] if type(trained.model).__module__.startswith("sr_ablate.") or module is None \
        else [inspect.getfile(module)]
    example = np.zeros((8, 8, 3), np.uint8)
    example[2:6, 2:6] = 255
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT
        save_model(str(path), python_model=SRModel(), artifacts={"weights": str(weights)},
                   signature=ModelSignature(inputs=Schema([IMAGE]), outputs=Schema([IMAGE])),
                   input_example=example, code_paths=code or None,
                   pip_requirements=[f"sr_ablate=={__version__}",
                                     f"torch=={torch.__version__.split('+')[0]}"],
                   metadata={"sr_ablate.scale": trained.scale, "sr_ablate.color": trained.color})
        log.client.log_artifacts(log.run_id, str(path), ARTIFACT)


def _run_of(client, spec: str, uri: str) -> str:
    """The run id behind ``spec``: a run id, ``runs:/<id>[/...]`` or ``models:/...``."""
    if not spec.startswith("models:/"):
        return spec.removeprefix("runs:/").strip("/").split("/")[0]
    ref = spec.removeprefix("models:/").strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.partition("/")
            if not number:
                raise UserError(f"{spec} names no version; give models:/{name}/<version> or "
                                f"models:/{name}@{ALIAS}")
            version = client.get_model_version(name, number)
    except MlflowException:
        raise UserError(f"{spec} is not in the model registry of {uri}; list the names in "
                        "`mlflow ui` (Models), or register one with sr-ablate report "
                        "--register <name>") from None
    if not version.run_id:
        raise UserError(f"{spec} was not registered from a run; register a run's model")
    return version.run_id


def load_trained(spec: str, uri: str) -> Trained:
    """The model at ``spec``: a final.pt path, a run id / ``runs:/<id>``, a registry URI
    ``models:/<name>/<version>`` / ``models:/<name>@<alias>``, or an exported .onnx file
    (run by onnxruntime); UserError (one line) if none."""
    if spec.endswith(".onnx"):  # an exported file, run by onnxruntime
        from sr_ablate.inference.onnx import from_onnx
        if not Path(spec).is_file():
            raise UserError(f"model file {spec} not found; give an .onnx file from sr-ablate "
                            "export")
        return from_onnx(spec)
    with weights_file(spec, uri) as path:
        return from_checkpoint(path, source=spec)


@contextmanager
def weights_file(spec: str, uri: str, key: str = "model") -> Iterator[Path]:
    """The local final.pt behind ``spec`` (a path as it is; a run id / ``runs:/<id>`` /
    ``models:/...`` downloaded from the store at ``uri`` into a temporary folder, deleted on
    exit); UserError (one line) when there is none. ``key``: the setting that gave ``spec``,
    for messages."""
    if spec.endswith(".pt") or Path(spec).is_file():
        yield Path(spec)
        return
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # MLflow would make an empty store there: say what is wrong instead
        raise UserError(f"{key}={spec} is not a file and there is no MLflow store at {uri}; "
                        "run from the folder of mlflow.db or pass tracking.uri=")
    client = client_for(uri)
    run_id = _run_of(client, spec, uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UserError(f"MLflow run {run_id!r} does not exist in {uri}; copy the id from "
                        "`mlflow ui` or set MLFLOW_TRACKING_URI to the right store") from None
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("checkpoints/final.pt", f"{ARTIFACT}/{WEIGHTS}"):
            try:
                local = client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError):
                continue
            yield Path(local)
            return
    raise UserError(f"MLflow run {run_id} has no weights (checkpoints/final.pt or model/); "
                    "it was run with tracking.checkpoint=false or did not finish")


def register(uri: str, run_id: str, name: str, metric: str, value: float) -> int:
    """Register run ``run_id``'s MLflow Model as a new version of ``name`` (created if new),
    point the alias ``best`` at it and tag it with the metric that chose it; the version."""
    client = client_for(uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="sr_ablate: the best run by "
                                       f"{metric}, alias @{ALIAS}")
    try:  # listed, not downloaded: only whether the run holds one matters here
        has_model = any(a.path == f"{ARTIFACT}/MLmodel"
                        for a in client.list_artifacts(run_id, ARTIFACT))
    except (MlflowException, OSError):
        has_model = False
    if not has_model:
        raise UserError(f"run {run_id} has no MLflow Model ({ARTIFACT}/); it finished before "
                        "sr_ablate logged models, or with tracking.checkpoint=false: "
                        "re-run it")
    version = client.create_model_version(name, f"runs:/{run_id}/{ARTIFACT}", run_id=run_id,
                                          tags={"sr_ablate.chosen_by": metric,
                                                metric: f"{value:.6g}"})
    client.set_registered_model_alias(name, ALIAS, version.version)
    client.set_registered_model_tag(name, "sr_ablate.chosen_by", metric)
    return int(version.version)
