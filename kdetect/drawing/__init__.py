"""Drawing: pictures with NumPy, Pillow and matplotlib only (curves, drawn detections)."""
