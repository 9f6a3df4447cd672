"""Probes of what convolution assumes about images: translation equivariance per stage, and FC vs CNN under shifted
and pixel-permuted data. Pure computations live here; the commands `probe_equivariance` and `probe_fc_vs_cnn` are in
fewlabels.methods.probes (and `fewlabels.probe_equivariance`, `fewlabels.probe_fc_vs_cnn`).
"""

from .equivariance import (
    cumulative_stride,
    equivariance_markdown,
    equivariance_probe,
    plot_equivariance,
    relative_error,
    shift,
    valid_region,
)
from .fc_vs_cnn import (
    CONDITIONS,
    conditions,
    count_params,
    fc_vs_cnn_markdown,
    matched_pair,
    permute_pixels,
    pixel_permutation,
    place,
    place_left,
    place_right,
    plot_fc_vs_cnn,
)

__all__ = [
    "CONDITIONS",
    "conditions",
    "count_params",
    "cumulative_stride",
    "equivariance_markdown",
    "equivariance_probe",
    "fc_vs_cnn_markdown",
    "matched_pair",
    "permute_pixels",
    "pixel_permutation",
    "place",
    "place_left",
    "place_right",
    "plot_equivariance",
    "plot_fc_vs_cnn",
    "relative_error",
    "shift",
    "valid_region",
]
