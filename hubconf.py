"""torch.hub entry points: the paper's CIFAR-10 nets (He et al. 2015, Sec. 4.2), and with `pretrained=True`
weights trained here by the paper's exact recipe and schedule on the original pixels, reporting the final
test error (not the best epoch), with their full record beside them in experiments/paper/<run>/.

    model = torch.hub.load("/path/to/resnet-repro", "cifar10_resnet20", source="local", pretrained=True)
    model = torch.hub.load("<owner>/resnet-repro", "cifar10_resnet20", pretrained=True)   # from GitHub
    logits = model(images)   # images: (N, 3, 32, 32) in [0, 1]; the training set's per-pixel mean is inside

Every model subtracts the per-pixel mean of the 50,000 training images it was trained on, as its training did
(no per-channel std): feed it images in [0, 1]. `pretrained=True` loads the run of seed 0 in the default recipe,
`experiments/paper/<net>-seed0/weights.pt` (its summary.json holds the file's sha256, error, device, commit);
`pretrained=False` builds the net, He-initialised.
"""

import os
import sys

dependencies = ["torch", "omegaconf"]

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from resnet_repro.weights import HUB, hub_model, hub_run  # noqa: E402 -- after the checkout's src/ is on the path


def _entry(name: str):
    arch, n = HUB[name]

    def load(pretrained: bool = False, **kwargs):
        return hub_model(arch, n, pretrained)

    load.__name__ = name
    load.__doc__ = (f"ResNet-{6 * n + 2} for CIFAR-10 (option A shortcuts)" if arch == "resnet"
                    else f"plain-{6 * n + 2} for CIFAR-10, the ResNet's twin without shortcuts")
    load.__doc__ += (f"; pretrained: experiments/paper/{hub_run(arch, n).path.name}/weights.pt. "
                     f"Input: images in [0, 1], (N, 3, 32, 32).")
    return load


cifar10_resnet20 = _entry("cifar10_resnet20")
cifar10_resnet32 = _entry("cifar10_resnet32")
cifar10_resnet44 = _entry("cifar10_resnet44")
cifar10_resnet56 = _entry("cifar10_resnet56")
cifar10_resnet110 = _entry("cifar10_resnet110")
cifar10_plain20 = _entry("cifar10_plain20")
cifar10_plain32 = _entry("cifar10_plain32")
cifar10_plain44 = _entry("cifar10_plain44")
cifar10_plain56 = _entry("cifar10_plain56")
