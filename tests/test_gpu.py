"""On a CUDA GPU only (skipped with a reason elsewhere; scripts/gpu_plan.py's probe runs the same checks and
times them): the precision auto picks for this card, no host sync in a training step (solo, packed) or per
ImageNet batch (both pipelines), and nvJPEG never handed memory that queued kernels still read."""

import pytest
import torch
from imagefolders import write_image_folder
from training import setup

from resnet_repro import imagenet
from resnet_repro.engine import choose_precision
from resnet_repro.imagenet_transforms import Normalize, Sizes
from resnet_repro.steppers import Packed, Solo, prepare_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def no_sync(steps):
    """Run `steps()` with any host sync an error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_auto_precision_is_native_bf16_or_fp16_by_generation():
    precision, why = choose_precision("auto", CUDA)
    capability = torch.cuda.get_device_capability(CUDA)
    assert precision == ("bf16" if capability >= (8, 0) else "fp16" if capability >= (7, 0) else "fp32"), why


@pytest.mark.parametrize("packed", [False, True])
def test_a_training_step_never_syncs_with_the_host(tmp_path, packed):
    cfg, engine, data, _ = setup(tmp_path, "engine.device=cuda", "engine.compile=false")
    solos = []
    for seed in range(4 if packed else 1):
        torch.manual_seed(seed)
        solos.append(prepare_model(cfg, engine, 10))
    stepper = Packed(solos, engine) if packed else Solo(*solos[0], engine)
    loader = stepper.loader([data.train.with_seed(s) for s in range(len(solos))])
    batches = iter(loader.epoch(0))
    window = torch.zeros(len(solos), 3, device=CUDA)
    for _ in range(2):  # warm-up: cuDNN autotuning may sync
        window += stepper.step([0.1] * len(solos), *next(batches))

    def steps():
        nonlocal window
        for _ in range(3):
            window += stepper.step([0.1] * len(solos), *next(batches))
        for _ in zip(range(2), loader.epoch(1)):  # a new epoch's randomness reaches the GPU without a sync
            pass

    no_sync(steps)
    assert window[:, 2].tolist() == [5.0 * 32] * len(solos)


@pytest.mark.parametrize("on_device", [False, True])
def test_imagenet_batches_never_sync_with_the_host(tmp_path, on_device):
    if on_device and not imagenet.decodes_on_device("auto", CUDA):
        pytest.skip("no nvJPEG in this torchvision build")
    train, _ = imagenet.load_splits(_data_cfg(), write_image_folder(tmp_path / "data"))
    loader = imagenet.FolderLoader(train, Sizes((40, 48), 32, 36, (32, 48)), Normalize(torch.zeros(3, 1, 1), CUDA),
                                   4, CUDA, 0, 0.1, 0, decode_on_device=on_device)
    batches = iter(loader.epoch(0))
    next(batches)
    no_sync(lambda: [next(batches) for _ in range(2)])


def test_nvjpeg_outputs_are_never_overwritten_by_queued_work(tmp_path):
    """Decode the same files again and again while big kernels keep the training stream busy and free their
    memory: every decoded batch must equal a decode made alone."""
    if not imagenet.decodes_on_device("auto", CUDA):
        pytest.skip("no nvJPEG in this torchvision build")
    train, _ = imagenet.load_splits(_data_cfg(), write_image_folder(tmp_path / "data"))
    sizes = Sizes((40, 48), 32, 36, (32, 48))
    reference = [x.clone() for x, _ in imagenet.FolderLoader(train, sizes, Normalize(torch.zeros(3, 1, 1), CUDA), 4,
                                                            CUDA, 0, 0.0, 0, decode_on_device=True).epoch(0)]
    for _ in range(5):
        loader = imagenet.FolderLoader(train, sizes, Normalize(torch.zeros(3, 1, 1), CUDA), 4, CUDA, 0, 0.0, 0,
                                       decode_on_device=True)
        for (x, _), ref in zip(loader.epoch(0), reference):
            busy = torch.randn(2048, 2048, device=CUDA)
            for _ in range(20):  # queued work that allocates and frees blocks of the training stream
                busy = (busy @ busy).tanh_()
            del busy
            assert torch.equal(x, ref)


def _data_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create({"sample": False, "train_dir": "train", "val_dir": "val"})
