"""Caption metrics: the COCO metrics papers report (pycocoevalcap) and the fast CIDEr-D reward
SCST trains on. Above `pipeline.decoder` (the reward reads its vocabulary), below train and infer."""
