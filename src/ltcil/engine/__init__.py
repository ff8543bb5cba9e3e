"""The engine: training loop, optimiser/schedule, seeding, checkpoints and the experiment runner."""
