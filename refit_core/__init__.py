"""refit_core: plan and execute the hand-over of an MoE model's weights between two parallel layouts.

Data flows one way: model spec -> parameter inventory -> rank layouts -> transfer plan -> execution
-> results. Everything up to the plan is pure Python (no torch.distributed, no GPU).
"""

from refit_core.errors import RefitError

__all__ = ["RefitError"]
