"""The local runner: the composition root of the operator's planner, the trainer's stages and the simulated world.

It sits above flywheel_operator, flywheel_trainer and flywheel_sim; none of them imports it
(tests/foundation/test_layers.py), so the operator image carries neither the simulator nor the trainer.
"""
