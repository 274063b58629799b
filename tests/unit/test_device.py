"""A job that asked for a GPU never falls back to the CPU in silence: both cluster failures, a CPU-only PyTorch build
and a node whose GPU the job cannot see, simulated by patching what torch reports."""

import pytest
import torch

from cytodml.learn.embed import GPUUnavailable, asks_for_gpu, choose_device, describe_device


@pytest.fixture()
def no_cuda(monkeypatch):
    """torch reports no usable GPU; each test sets what the build says."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


@pytest.mark.parametrize(
    ("resources", "asked"),
    [
        ({"gpu": 1}, True),  # the profiles' train and embed
        ({"gpu": 0}, False),  # --resources gpu=0 caps the request on a CPU machine
        ({}, False),  # a plain `snakemake --cores N`
        ({"gres": "gpu:1"}, True),
        ({"gres": "gpu:a100:2"}, True),
        ({"gres": "tmpfs:10G", "gpu": None}, False),
    ],
)
def test_a_job_asks_for_a_gpu_by_its_gpu_or_gres_resource(resources, asked):
    assert asks_for_gpu(resources) is asked


def test_a_cpu_only_build_stops_a_job_that_asked_for_a_gpu(no_cuda):
    no_cuda.setattr(torch.version, "cuda", None)
    with pytest.raises(GPUUnavailable, match="CPU-only build"):
        choose_device(require_gpu=True)


def test_a_node_without_a_visible_gpu_stops_a_job_that_asked_for_one(no_cuda):
    no_cuda.setattr(torch.version, "cuda", "12.4")
    no_cuda.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(GPUUnavailable, match=r"built for CUDA 12\.4.*sees no GPU \(CUDA_VISIBLE_DEVICES=''\)"):
        choose_device(require_gpu=True)


def test_a_job_that_asked_for_no_gpu_runs_on_the_cpu_and_says_so(no_cuda):
    no_cuda.setattr(torch.version, "cuda", None)
    device = choose_device()
    assert device.type == "cpu"
    assert describe_device(device).startswith("cpu (PyTorch ")
