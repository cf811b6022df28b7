"""DINO-Tracker proper (stages 2-3): the DeltaDINO + head model, its losses and batch sampler, test-time
training, and inference (refined features, tracking, occlusion)."""
