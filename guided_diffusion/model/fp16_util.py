"""Float16 conversion as the ADM release does it (convolutions only; norms and embeddings stay float32)."""

import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to_f16(module):
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module):
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()
