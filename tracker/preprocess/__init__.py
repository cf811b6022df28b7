"""Preprocessing (DINO-Tracker stage 1): frames, features, optical flow, trajectories, masks and best
buddies, cached per video in the work folder. Entry point: :func:`tracker.preprocess.pipeline.preprocess_video`."""
