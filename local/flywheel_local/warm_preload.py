"""What the warm-start forkserver imports before it forks stage programs (flywheel_local.warm): the libraries every
stage program would import at its start, and the stage modules themselves. Importing is all it does: no model,
no thread pool and no torch operation runs here, so a forked stage starts as a fresh process would.

The server shares the runner's terminal: what the imports print goes to /dev/null (each forked stage writes to its
own log)."""

import os

_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)
os.close(_null)


import datasets  # noqa: E402, F401
import torch  # noqa: E402, F401
import transformers  # noqa: E402, F401
import trl  # noqa: E402, F401
from flywheel_trainer import cli, curate, evaluate, reward, rl, sft  # noqa: E402, F401
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer  # noqa: E402, F401
from trl import GRPOTrainer, RewardTrainer, SFTTrainer  # noqa: E402, F401
