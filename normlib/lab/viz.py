r"""Figures the lessons draw, computed from the definitions they illustrate."""

from __future__ import annotations

import numpy as np

NORM_KINDS = ("batch", "layer", "instance", "group")


def norm_set_mask(kind: str, n: int, c: int, hw: int, groups: int = 2, i: tuple[int, int] = (0, 0)) -> np.ndarray:
    r"""Boolean mask over an ``(N, C, H*W)`` block of the set :math:`S_i` for the element ``i = (i_N, i_C)``.

    Evaluates the set definitions index by index:
    BatchNorm :math:`k_C = i_C`; LayerNorm :math:`k_N = i_N`; InstanceNorm :math:`k_N = i_N, k_C = i_C`;
    GroupNorm :math:`k_N = i_N, \lfloor k_C / (C/G) \rfloor = \lfloor i_C / (C/G) \rfloor`.
    """
    k_n, k_c, _ = np.indices((n, c, hw))
    i_n, i_c = i
    if kind == "batch":
        return k_c == i_c
    if kind == "layer":
        return k_n == i_n
    if kind == "instance":
        return (k_n == i_n) & (k_c == i_c)
    if kind == "group":
        if c % groups:
            raise ValueError(f"C={c} is not divisible by G={groups}")
        per = c // groups
        return (k_n == i_n) & (k_c // per == i_c // per)
    raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")


def plot_norm_sets(n: int = 6, c: int = 6, hw: int = 6, groups: int = 3, i: tuple[int, int] = (0, 0)):
    """The classic figure: an ``(N, C, H*W)`` block per norm, the set :math:`S_i` shaded blue."""
    import matplotlib.pyplot as plt

    titles = {"batch": "Batch Norm", "layer": "Layer Norm", "instance": "Instance Norm",
              "group": f"Group Norm (G={groups})"}
    fig = plt.figure(figsize=(7, 6.6))
    for j, kind in enumerate(NORM_KINDS):
        ax = fig.add_subplot(2, 2, j + 1, projection="3d")
        mask = norm_set_mask(kind, n, c, hw, groups, i)
        colors = np.where(mask[..., None], np.array([0.23, 0.45, 0.85, 1.0]), np.array([0.92, 0.92, 0.92, 0.35]))
        ax.voxels(np.ones((n, c, hw), bool), facecolors=colors, edgecolor=(0.3, 0.3, 0.3, 0.4), linewidth=0.3)
        ax.set_xlabel("N")
        ax.set_ylabel("C")
        ax.set_zlabel("H, W")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_box_aspect((1, 1, 1), zoom=0.8)
        ax.view_init(elev=20, azim=-60)
        ax.set_title(f"{titles[kind]}\n|S_i| = {int(mask.sum())} of {mask.size}", fontsize=10)
    fig.tight_layout()
    return fig
