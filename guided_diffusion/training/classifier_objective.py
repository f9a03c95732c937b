"""Training objective of the noisy-image classifier that classifier guidance differentiates.

As in the ADM release's classifier training (`--noised True`): a training image is diffused to a uniform
random timestep t with the model's noise schedule, and the classifier, told t, is trained with cross
entropy to name the image's class. The objective looks like a diffusion to the training loop
(`training_losses`, `num_timesteps`), so classifiers train with the same loop, EMA, mixed precision and
resumable checkpoints as the diffusion models.
"""

import torch.nn.functional as F


class NoisyClassifierObjective:
    """Cross entropy of `classifier(q_sample(x_0, t), t)` against the labels in `model_kwargs["y"]`."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self.num_timesteps = diffusion.num_timesteps

    def training_losses(self, classifier, x_start, t, model_kwargs=None, noise=None):
        labels = (model_kwargs or {}).get("y")
        if labels is None:
            raise ValueError("classifier training needs class labels: the data must be class-labelled")
        logits = classifier(self.diffusion.q_sample(x_start, t, noise=noise), t).float()
        # per image, so that the loop logs each by noise level (loss_q0 .. loss_q3, accuracy_q0 ..)
        return {"loss": F.cross_entropy(logits, labels, reduction="none"),
                "accuracy": (logits.argmax(dim=-1) == labels).float()}
