"""D-SGD (Lian et al. 2017; the paper's eq. D-SGD): x_i^(t+1) = sum_j w_ij (x_i^t - lr g_i^t), with the local
optimizer's update (momentum stays local) in place of lr g. No companion state; X is what is gossiped."""
from __future__ import annotations

from .base import Algorithm


class DSGD(Algorithm):
    name = "dsgd"
