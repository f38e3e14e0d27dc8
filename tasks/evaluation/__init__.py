"""Face evaluation (evaluate_faces): dlib face features, FD/KID/precision/recall, identity, and the
DreamBooth targets (`targets`)."""
