"""Many models in one program: the batched path, in one place.

    train.py     train_batched: K members (seeds, MLP widths, CNN channels, nested train sizes) at once, with the
                 same inputs and records as K runs of the plain loop; can_batch says what it implements
    models.py    StackedModel: the members as stacked, zero-padded parameters (why padding is exact);
                 WIDTH_KEY, MODEL_KEYS: the knobs a stack may differ in and the knobs it implements
    ops.py       the CPU training step by hand (forward and backward without autograd's engine)
    plan.py      the planner: which members train together (cost model, memory budget), stacks side by side
    schedule.py  the batched launcher's side: groups of Hydra jobs as stacks, one record per job

The plain path (models.py, protocol.py, train.py, optim.py of mnist1d_lab) knows nothing of stacks; this
package reuses it (model construction, protocol, optimiser, evaluation) so that both give the same numbers.
"""

from .models import FAMILIES, MODEL_KEYS, WIDTH_KEY, StackedModel, member_width
from .plan import Stack, plan_stacks
from .schedule import execute_groups, group_key, single_cost
from .train import TRAIN_KEYS, batch_key, can_batch, nested_size, stacked_update, train_batched

__all__ = ["FAMILIES", "MODEL_KEYS", "TRAIN_KEYS", "WIDTH_KEY", "Stack", "StackedModel", "batch_key", "can_batch",
           "execute_groups", "group_key", "member_width", "nested_size", "plan_stacks", "single_cost", "stacked_update",
           "train_batched"]
