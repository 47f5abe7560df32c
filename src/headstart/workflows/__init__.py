"""The workflows that compose the engine: pretraining (text and images) and fine-tuning."""
