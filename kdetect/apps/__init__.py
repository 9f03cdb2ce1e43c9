"""Apps: what users run on a trained detector: prediction and its formats, the server, the Label
Studio backend, exports and checkpoint imports."""
