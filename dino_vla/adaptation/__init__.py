"""Adapting perception to a robot's own frames: fine-tuning and evaluation on the project's dataset format."""
