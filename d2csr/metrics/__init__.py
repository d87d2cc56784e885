"""Metrics registered into ``basicsr.utils.registry.METRIC_REGISTRY`` (``val: metrics: <name>: type: ...``)."""
from .lpips_metric import calculate_lpips, get_lpips_net  # noqa: F401
from .paper_metrics import calculate_d2csr_paper_psnr, calculate_d2csr_paper_ssim  # noqa: F401
