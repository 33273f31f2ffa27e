"""Decoding and augmenting on the training device (`engine.decode: gpu`): nvJPEG decodes whole batches on
their own CUDA stream, the scale/crop/flip runs on a second one, a batch ahead of training, in a thread.

torchvision's CUDA `decode_jpeg` allocates its outputs on the caller's stream and writes them from a stream
of its own without waiting (pytorch/vision#9606; torchcodec fixed the same in pytorch/torchcodec#1634):
called on the training stream, it can be handed a block that a queued training kernel still reads. Here it
is only ever called on a stream that runs nothing else, whose blocks the caching allocator reuses only once
every stream that read them has finished (`record_stream`); the training stream waits on an event, never
the host. On a CPU all of this is the plain sequence, in line: the same batches either way.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg

from .config import DECODES
from .errors import UserError


def decode_bytes(data: torch.Tensor, path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB on the CPU from a file's bytes; grey and CMYK JPEGs are converted."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise UserError(f"cannot decode image {path} ({e})")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync: pinned, then copied asynchronously."""
    if device.type != "cuda":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def decode_on(device: torch.device, data: list[torch.Tensor], paths: list[str]) -> list[torch.Tensor]:
    """A batch of files' bytes as uint8 (3, H, W) RGB images on `device`. On CUDA one nvJPEG call
    decodes the whole batch; a batch nvJPEG refuses (a PNG named .JPEG, as ImageNet has, or a JPEG
    it cannot read) is decoded file by file, and what nvJPEG still refuses, on the CPU."""
    if device.type != "cuda":
        return [decode_bytes(d, p).to(device) for d, p in zip(data, paths)]
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    images = []
    for d, p in zip(data, paths):
        try:
            images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images.append(to_device(decode_bytes(d, p), device))
    return images


def nvjpeg_works(device: torch.device) -> bool:
    """Whether torchvision can decode JPEGs on this device (a CUDA build with nvJPEG)."""
    if device.type != "cuda":
        return False
    try:
        probe = encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
        return decode_jpeg(probe, device=device).shape == (3, 16, 16)
    except Exception:  # no nvJPEG in this build, or the driver refuses: the CPU path still works
        return False


def decodes_on_device(setting: str, device: torch.device) -> bool:
    """`engine.decode`: cpu (workers decode), gpu (nvJPEG on the training GPU), or auto (gpu where it works)."""
    if setting not in DECODES:
        raise UserError(f"engine.decode={setting}: choose one of {', '.join(DECODES)}")
    if setting == "cpu":
        return False
    works = nvjpeg_works(device)
    if setting == "gpu" and not works:
        why = "this run trains on the CPU" if device.type != "cuda" else "nvJPEG decoding failed on this GPU"
        raise UserError(f"engine.decode=gpu: {why}; use engine.decode=auto or engine.decode=cpu")
    return works


class DecodeStreams:
    """The decode stream (nvJPEG alone), the augment stream (scale, crop, flip, normalise) and the hand-over
    to the training stream. On a CPU every step is a no-op."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.decode, self.augment = torch.cuda.Stream(device), torch.cuda.Stream(device)

    @contextlib.contextmanager
    def decoding(self):
        with torch.cuda.stream(self.decode) if self.cuda else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def augmenting(self, images: list[torch.Tensor]):
        """The augment stream, after the decode; the decoded images' blocks wait for it before reuse."""
        if not self.cuda:
            yield
            return
        self.augment.wait_stream(self.decode)
        for img in images:
            img.record_stream(self.augment)
        with torch.cuda.stream(self.augment):
            yield

    def done(self, batch):
        """The batch with the event the training stream waits on before reading it."""
        return batch, (self.augment.record_event() if self.cuda else None)

    @staticmethod
    def receive(batch, event):
        """On the training stream: wait for the batch (on the device, not the host) and keep its memory
        from reuse until the training stream is done with it."""
        if event is None:
            return batch
        stream = torch.cuda.current_stream()
        stream.wait_event(event)
        for t in _tensors(batch):
            t.record_stream(stream)
        return batch


def _tensors(batch):
    for item in batch:
        if isinstance(item, torch.Tensor):
            if item.is_cuda:
                yield item
        elif isinstance(item, (list, tuple)):
            yield from _tensors(item)


AHEAD = 2  # batches decoded ahead of the one training


def ahead(batches: Iterable, streams: DecodeStreams) -> Iterator:
    """The (batch, event) pairs of `batches`, received on the training stream. On CUDA a thread produces
    them `AHEAD` batches in advance, so decoding overlaps the training step; on a CPU, in line."""
    if not streams.cuda:
        for batch, event in batches:
            yield streams.receive(batch, event)
        return
    ready: queue.Queue = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(end)
        except BaseException as e:  # handed to the consumer, which raises it in the training thread
            ready.put(e)

    thread = threading.Thread(target=produce, name="decode-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield streams.receive(*item)
    finally:
        stop.set()
        thread.join(timeout=5)
