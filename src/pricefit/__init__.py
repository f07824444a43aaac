"""pricefit: listings -> curated data -> QLoRA fine-tuned price predictor -> honest evaluation."""

__version__ = "0.1.0"
