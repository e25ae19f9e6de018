"""Finding and cropping faces: the batched MTCNN detector, the face box rules, crop.py's steps."""
