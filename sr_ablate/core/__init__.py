"""The SR protocol itself, in torch only: degradation (MATLAB imresize), metrics (PSNR, SSIM on
Y), whole-image evaluation, tiled inference, model cost."""
