"""Tests of mmgen_lightning/modalities/, one file per module."""

#: the data spec the modality tests size from: every modality, tiny sizes
SPEC = {"dataset": "toy", "modalities": ["image", "text", "audio", "video", "label"], "vocab_size": 12,
        "max_text_length": 6, "image_size": 16, "image_channels": 1, "num_frames": 4, "sample_rate": 8000,
        "audio_length": 4000, "num_classes": 3, "attribute_names": ["digit"], "attribute_sizes": [10]}
