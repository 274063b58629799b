"""Embedding networks: an image ``[B, C, S, S]`` to a point ``[B, D]`` of the latent space.

Every network is an :class:`EmbeddingNet`: named blocks (the backbone) followed by a head. ``forward`` returns the
embedding, L2-normalised when the loss works on the unit sphere; ``features`` returns each block's output averaged over
the image plane, for the per-block t-SNE figure of Luo et al. (2021). Networks are built from an experiment's
``network:`` block by :func:`build_model`; the channel count and patch size come from the data.
"""

import inspect
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cytodml.config import checked
from cytodml.errors import InputError


class EmbeddingNet(nn.Module):
    """Blocks, then a head; ``embedding = head(blocks(x))``, divided by its L2 norm when ``normalize``."""

    def __init__(self, blocks: "OrderedDict[str, nn.Module]", head: nn.Module, normalize: bool):
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.head = head
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.embedding(x)

    def embedding(self, last_block_output: torch.Tensor) -> torch.Tensor:
        embedding = self.head(last_block_output)
        return F.normalize(embedding, dim=1) if self.normalize else embedding

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The embedding and each block's output global-average-pooled to ``[B, channels]`` (already pooled outputs
        pass unchanged), from one pass."""
        pooled = {}
        for name, block in self.blocks.items():
            x = block(x)
            pooled[name] = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        return self.embedding(x), pooled


def glorot_init(module: nn.Module) -> None:
    """Glorot & Bengio (2010) uniform weights for every convolution and dense layer, zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class BasicBlock(nn.Module):
    """He et al. (2016) residual unit: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The first convolution carries the stride. The shortcut is the identity when shape is kept; when only the
    resolution halves it is the parameter-free strided identity ``x[:, :, ::2, ::2]`` (He et al.'s option A); when the
    channel count changes it is a 1x1 strided convolution with batch norm (option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.projection = None
        if in_channels != out_channels:
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.projection(x) if self.projection is not None else x[:, :, :: self.stride, :: self.stride]
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


def residual_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """One of Luo et al.'s RB0-RB2: two basic units, the first halving the resolution."""
    return nn.Sequential(BasicBlock(in_channels, out_channels, 2), BasicBlock(out_channels, out_channels, 1))


def luo2021(in_channels: int, embedding_dim: int, normalize: bool = False) -> EmbeddingNet:
    """The rare-bioparticle network of Luo et al., RSC Adv 2021, 11:17603, their Table 1.

    7x7 convolution (64, stride 2) + batch norm + ReLU; residual blocks RB0 (64), RB1 (128), RB2 (256), each halving
    (120 -> 60 -> 30 -> 15 -> 8 pixels); average pool to 2x2 (1 024 features); dense 256; PReLU with one parameter;
    dense to ``embedding_dim`` (2 in the paper). Glorot-uniform initialisation.

    The published parameter counts (9 536 / 147 968 / 525 568 / 2 099 712 / 0 / 262 400 / 1 / 514) are matched
    exactly with 3 input channels, and they fix what the text leaves open: the stem convolution has no bias and is
    followed by batch norm (7*7*3*64 + 2*64 = 9 536); each residual block holds two basic units of two bias-free 3x3
    convolutions with batch norm (4 * 3*3*64*64 + 4 * 2*64 = 147 968 for RB0), so four convolutions, not the two the
    text describes; RB1 and RB2 add a 1x1 projection shortcut with batch norm where the channel count doubles
    (525 568 = 73 728 + 147 456 * 3 + 8 192 + 7 * 256). These are the layer shapes of ResNet-18's stem, layer1, layer2
    and layer3. RB0 keeps 64 channels, so its count leaves no room for a projection: its halving shortcut is the
    parameter-free strided identity. (ResNet-18 halves there with a 3x3 max-pool instead, same counts; the table's
    RB0 "halving" is followed here.) With C input channels the stem has 7*7*C*64 + 128 parameters, 3 264 for grey.
    """
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
    )
    blocks = OrderedDict(
        conv=stem, rb0=residual_block(64, 64), rb1=residual_block(64, 128), rb2=residual_block(128, 256)
    )
    head = nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            dense1=nn.Linear(256 * 2 * 2, 256),
            prelu=nn.PReLU(num_parameters=1),
            dense2=nn.Linear(256, embedding_dim),
        )
    )
    net = EmbeddingNet(blocks, head, normalize)
    glorot_init(net)
    return net


# Gupta et al.'s Table 1 as printed: (kernel height, kernel width), stride. Stride-1 layers pad to keep the size;
# strided ones do not pad, which halves an even size for every printed kernel (128 -> 64 -> 32 -> 16 -> 8 -> 4).
GUPTA2019_CONVS = (
    ((5, 5), 1), ((2, 1), 2), ((5, 5), 1), ((2, 1), 2), ((5, 5), 1), ((2, 1), 2),
    ((5, 3), 1), ((2, 1), 2), ((5, 5), 1), ((2, 2), 2), ((5, 5), 1),
)  # fmt: skip


def gupta2019_output_size(image_size: int) -> tuple[int, int]:
    """Height and width after the eleven convolutions; a size below 1 means the image is too small."""
    height = width = image_size
    for (kernel_h, kernel_w), stride in GUPTA2019_CONVS:
        if stride > 1:
            height = (height - kernel_h) // stride + 1
            width = (width - kernel_w) // stride + 1
    return height, width


def gupta2019(in_channels: int, image_size: int, embedding_dim: int, normalize: bool = True) -> EmbeddingNet:
    """The mitotic HEp-2 network of Gupta et al., CVPR Workshops 2019, their Table 1.

    Eleven convolutions of 128 channels with ReLU: 5x5 stride-1 convolutions alternating with strided ones of the
    printed kernel sizes (2x1, 2x1, 2x1, 5x3 at stride 1, 2x1, 2x2); global average pooling; dense 512, 256, 128 with
    ReLU; a linear dense layer to ``embedding_dim`` (128). The 2x1 kernels are kept as printed, so an image of odd
    size comes out of a strided layer one row shorter than wide; the global pool absorbs that.
    """
    if min(gupta2019_output_size(image_size)) < 1:
        smallest = next(size for size in range(1, 4096) if min(gupta2019_output_size(size)) >= 1)
        raise InputError(
            f"network.name 'gupta2019' needs patches of at least {smallest} pixels; the data's patch size is "
            f"{image_size} (dataset patch.size)"
        )
    blocks = OrderedDict()
    channels = in_channels
    for number, (kernel, stride) in enumerate(GUPTA2019_CONVS, start=1):
        padding = (kernel[0] // 2, kernel[1] // 2) if stride == 1 else 0
        blocks[f"conv{number}"] = nn.Sequential(
            nn.Conv2d(channels, 128, kernel, stride=stride, padding=padding), nn.ReLU(inplace=True)
        )
        channels = 128
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, embedding_dim),
    )
    net = EmbeddingNet(blocks, head, normalize)
    glorot_init(net)
    return net


def small(in_channels: int, embedding_dim: int, widths, stem_stride: int, normalize: bool = False) -> EmbeddingNet:
    """A small CNN for CPU studies: per width a 3x3 convolution + batch norm + ReLU + 2x2 max-pool (rounding up, so
    28 px images pass too), then global average pooling and one dense layer to ``embedding_dim``.

    The first convolution strides ``stem_stride``: 2 at 48 px trains about 3.5x faster on a CPU than 1, the
    full-resolution batch norm and pooling being what the time goes to; 1 keeps the detail of small patches.
    """
    blocks = OrderedDict()
    channels = in_channels
    for number, width in enumerate(widths, start=1):
        blocks[f"block{number}"] = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=stem_stride if number == 1 else 1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        channels = width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, embedding_dim))
    net = EmbeddingNet(blocks, head, normalize)
    glorot_init(net)
    return net


def timm_net(
    in_channels: int,
    model: str,
    embedding_dim: int,
    sigmoid: bool,
    normalize: bool = False,
    pretrained_path: str | None = None,
) -> EmbeddingNet:
    """Any `timm <https://github.com/huggingface/pytorch-image-models>`_ backbone with its global pooling, then a
    dense embedding layer, optionally squashed by a sigmoid as in Medela & Picon (2020).

    Weights are never downloaded: ``pretrained_path`` names a local state-dict file (``.pth``, ``.bin`` or
    ``.safetensors``); its classifier is dropped and its first convolution adapted to ``in_channels`` (summed for grey).
    """
    try:
        import timm
    except ImportError as err:
        raise InputError(
            f"network.name 'timm' needs the timm package (pip install 'cytodml[timm]', with a torchvision matching "
            f"the installed torch), which did not import: {err}"
        ) from err
    if not timm.is_model(model):
        raise InputError(f"network.model: timm knows no model {model!r} (see timm.list_models())")
    backbone = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels)
    if pretrained_path is not None:
        load_timm_weights(backbone, pretrained_path, in_channels)
    head = nn.Sequential(nn.Linear(backbone.num_features, embedding_dim))
    if sigmoid:
        head.append(nn.Sigmoid())
    return EmbeddingNet(OrderedDict(backbone=backbone), head, normalize)


def load_timm_weights(backbone: nn.Module, path: str, in_channels: int) -> None:
    """Load a local pretrained state dict into a timm backbone built with ``num_classes=0``.

    Reads ``.safetensors`` or a torch file with ``weights_only=True`` (a bare state dict, or one under ``state_dict``
    / ``model``); classifier weights are dropped, and a 3-channel first convolution is adapted to ``in_channels``
    with timm's ``adapt_input_conv`` (summed for grey, repeated and rescaled for more channels).
    """
    from timm.models import adapt_input_conv

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing file, foreign pickle, corrupt archive: all a bad pretrained_path
        raise InputError(f"network.pretrained_path: cannot read {path}: {type(err).__name__}: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    own = backbone.state_dict()
    first_conv = f"{backbone.pretrained_cfg.get('first_conv')}.weight"
    if first_conv in state and first_conv in own and state[first_conv].shape[1] != own[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(in_channels, state[first_conv])
    missing = sorted(set(own) - set(state))
    if missing:
        raise InputError(
            f"network.pretrained_path: {path} lacks {len(missing)} of the backbone's weights "
            f"(first: {missing[0]}); is it a state dict of this timm model?"
        )
    try:
        backbone.load_state_dict({key: state[key] for key in own})
    except RuntimeError as err:
        raise InputError(f"network.pretrained_path: {path} does not fit network.model: {err}") from err


NETWORKS = {"luo2021": luo2021, "gupta2019": gupta2019, "small": small, "timm": timm_net}


def build_model(network: dict, in_channels: int, image_size: int, normalize: bool) -> EmbeddingNet:
    """The network an experiment's ``network:`` block names, for images of ``in_channels`` x ``image_size``^2.

    ``network`` holds ``name`` and ``embedding_dim`` plus the named network's keyword options: ``small`` takes
    ``widths``; ``timm`` takes ``model`` (required), ``sigmoid`` and ``pretrained_path``. Options it lacks take the
    config schema's defaults. ``init`` (the weights training starts from) is not the architecture's: the trainer
    loads it into the network built here.
    """
    network = checked("network", network, "network")
    name = network["name"]
    builder = NETWORKS[name]
    parameters = inspect.signature(builder).parameters
    from_data = {"in_channels", "image_size", "normalize"}
    options = {key: value for key, value in network.items() if key not in ("name", "init")}
    for key in options:
        if key not in parameters or key in from_data:
            takes = ", ".join(sorted(set(parameters) - from_data))
            raise InputError(f"network.{key}: network {name!r} takes no option {key!r}; it takes: {takes}")
    for key, parameter in parameters.items():
        if key not in from_data and key not in options and parameter.default is inspect.Parameter.empty:
            raise InputError(f"network.{key}: network {name!r} needs this option")
    if "image_size" in parameters:
        options["image_size"] = image_size
    return builder(in_channels, normalize=normalize, **options)
