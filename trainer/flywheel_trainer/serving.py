"""How the served chat predictor samples by default: the one place its sampling settings are defined.

`flywheel_trainer.predictor` (the model KServe serves, and the local runner's simulated users through the same
class) uses them unless a request or its command line says otherwise, and the `eval` stage samples the responses
it measures with them unless `settings.eval.maxNewTokens` / `temperature` are set: the offline instruction
following and style figures are then those of what users meet (issue 26: sampled at 0.7 with 48 tokens they read
0.834 where the oracle, at the serving 1.0 and 40, read 0.675). The local runner renders the world's `serving`
settings into the eval stage's config instead (flywheel_local.backend.LocalBackend.render), since its simulated
users meet the predictor at those.
"""

from __future__ import annotations

SERVING_MAX_NEW_TOKENS = 32
"""Longest served response in tokens (`python -m flywheel_trainer.predictor --max_new_tokens`)."""
SERVING_TEMPERATURE = 1.0
"""Served sampling temperature (`--temperature`)."""


def eval_sampling(max_new_tokens: int | None, temperature: float | None) -> dict[str, float | int]:
    """The eval stage's `max_new_tokens` and `temperature`: each as set, else the serving default."""
    return {
        "max_new_tokens": SERVING_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
        "temperature": SERVING_TEMPERATURE if temperature is None else temperature,
    }
