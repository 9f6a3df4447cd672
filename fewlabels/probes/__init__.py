"""Probes of what convolution assumes about images: translation equivariance per stage, and FC vs CNN under shifted
and pixel-permuted data. Pure computations live here; `probe_equivariance` and `probe_fc_vs_cnn` (the commands'
Python API, defined in fewlabels.methods.probes) are re-exported lazily, because the methods layer imports this one.
"""

from typing import Any

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

_COMMANDS = ("probe_equivariance", "probe_fc_vs_cnn")


def __getattr__(name: str) -> Any:
    if name in _COMMANDS:
        from ..methods import probes

        return getattr(probes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "probe_equivariance",
    "probe_fc_vs_cnn",
    "relative_error",
    "shift",
    "valid_region",
]
