"""Analytic cost of training a model: parameters, FLOPs, memory, the largest batch that fits and
the time per step. Pure arithmetic on the config: no numpy, no framework.

FLOPs. A multiply-add counts as two operations. Every matmul and convolution is counted, the
attention score and value products included; normalisations, activations, softmax, pooling and
the optimizer are left out (as in Kaplan et al., 2020, arXiv:2001.08361, and the published ResNet
figure: ResNet-50 at 224 px is 4.1 GMACs = 8.2 GFLOPs). This is exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts for our torch models under the math attention
backend (tests/test_estimates.py checks it). The backward pass of a matmul or convolution costs
twice its forward (the gradient for the input and the one for the weight), except that nothing
computes the gradient for the data itself: the first layer that reads the input (ViT's patch
embedding, ResNet's stem convolution; token embeddings are lookups and cost nothing) skips its
input gradient. Training = forward + backward; activation checkpointing adds one more forward.

Memory. Parameters and optimizer state by precision (bytes per trainable parameter):

    fp32 / tf32      weights 4 + gradients 4 + AdamW moments 8                      = 16
    bf16 / fp16      the same fp32 master weights, gradients and moments, plus the
                     16-bit copy of the weights the matmuls read                      = 18

"bf16" and "fp16" mean mixed precision as the generated projects and ``torch.autocast`` do it
(fp32 weights and residual stream, 16-bit matmul inputs; Micikevicius et al., 2018,
arXiv:1710.03740); fp16 also needs loss scaling, which costs no memory. The ZeRO paper's 16
bytes per parameter (Rajbhandari et al., 2020, arXiv:1910.02054) keeps 16-bit gradients, which
autocast does not.

Activations are what the forward pass stores for the backward pass, counted tensor by tensor for
the zoo's own layers, the way Korthikanti et al. (2022), "Reducing Activation Recomputation in
Large Transformer Models" (arXiv:2205.05198) count them for a transformer layer; with 16-bit
activations, 1-byte dropout masks and f = 4h our count per layer is their 34sbh + 5as^2b. Two
kernel sets are modelled:

    "reference"  torch's eager kernels on CPU: math attention (stores the s x s probabilities),
                 dropout keeps its random mask in the activation dtype;
    "fused"      GPU kernels: flash / memory-efficient attention (no s x s tensor; it keeps the
                 output and a log-sum-exp per row and replays dropout from the RNG), 1-byte masks.

The model's logits and the log-softmax the cross-entropy keeps (fp32) are included. Activation
checkpointing is per residual block (``torch.utils.checkpoint`` / ``jax.checkpoint`` around each
block; Chen et al., 2016, arXiv:1604.06174): only block inputs are kept, and one block's
activations are live again while it is recomputed. The total adds gradients to activations,
an upper bound: in reality activations are freed while gradients are created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .configs import BertConfig, GPTConfig, ResNetConfig, ViTConfig, ZooError
from .spec import canonical_spec, count_params

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
KERNELS: tuple[str, ...] = ("reference", "fused")
# Bytes per trainable parameter: weights + gradients + AdamW's two moments, all fp32.
_STATE_BYTES_PER_PARAM = 16
_FP32 = 4
_INT64 = 8


class EstimateError(ZooError):
    pass


def _activation_bytes(precision: str) -> int:
    if precision not in PRECISIONS:
        raise EstimateError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    return 2 if precision in ("bf16", "fp16") else 4


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What one example is: ``tokens`` for the transformers (ViT: patches + [CLS]), ``image_size``
    for the vision models."""

    arch: str
    tokens: int | None
    image_size: int | None

    @property
    def unit(self) -> str:
        if self.arch in ("gpt", "bert"):
            return f"{self.tokens} tokens"
        return f"{self.image_size}x{self.image_size} image"


def workload(arch: str, config, *, seq_len: int | None = None, image_size: int | None = None) -> Workload:
    """Resolve and check the example shape. ``seq_len`` applies to gpt and bert only and may not
    exceed the context; ``image_size`` applies to resnet only (ViT's image size is part of its
    config: the position embeddings are sized for it). Raises EstimateError otherwise."""
    spec_check = canonical_spec  # validates arch against config type
    spec_check(arch, config)
    for name, value in (("seq_len", seq_len), ("image_size", image_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise EstimateError(f"{name} must be a positive integer, got {value!r}")
    if arch in ("gpt", "bert"):
        if image_size is not None:
            raise EstimateError(f"image_size does not apply to {arch} (a text model); give seq_len instead")
        context = config.context_length if arch == "gpt" else config.max_positions
        tokens = context if seq_len is None else seq_len
        if tokens > context:
            raise EstimateError(
                f"seq_len {tokens} is longer than the {arch} context of {context} positions; "
                f"use seq_len <= {context} or a config with a longer context"
            )
        return Workload(arch, tokens, None)
    if seq_len is not None:
        raise EstimateError(
            f"seq_len does not apply to {arch} (an image model)"
            + (
                "; its sequence is fixed by the config: image_size/patch_size squared patches + [CLS]"
                if arch == "vit"
                else "; give image_size instead"
            )
        )
    if arch == "vit":
        if image_size is not None and image_size != config.image_size:
            raise EstimateError(
                f"ViT's image size is part of its config (position embeddings for "
                f"{config.num_patches} patches at {config.image_size} px); use a config "
                f"with image_size={image_size} instead of the image_size option"
            )
        return Workload(arch, config.num_patches + 1, config.image_size)
    return Workload(arch, None, 224 if image_size is None else image_size)


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Flops:
    """Per example. ``tokens`` is None for ResNet (it has no tokens), and so are the per-token
    figures."""

    forward: int
    backward: int
    train: int  # forward + backward
    tokens: int | None

    @property
    def forward_per_token(self) -> float | None:
        return None if self.tokens is None else self.forward / self.tokens

    @property
    def train_per_token(self) -> float | None:
        return None if self.tokens is None else self.train / self.tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "forward_per_token": self.forward_per_token, "train_per_token": self.train_per_token}


def _transformer_layers(n_layers: int, t: int, d: int, mlp: int) -> int:
    # qkv, scores, probabilities x values, output projection, two MLP matmuls
    per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * mlp
    return n_layers * per_layer


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _resnet_convs(c: ResNetConfig, image_size: int):
    """Every convolution as (kernel, c_in, c_out, output size), in order, grouped per block:
    [stem], then one list per residual block; plus the size after the stem's max-pool."""
    h = _conv_out(image_size, 7, 2, 3)
    stem = [(7, c.num_channels, c.stem_width, h)]
    h = _conv_out(h, 3, 2, 1)  # max-pool 3x3/2, pad 1
    pooled = h
    blocks = []
    for stage in c.layout():
        for n_in, width, n_out, stride in stage:
            h_out = _conv_out(h, 3, stride, 1)
            if c.block == "bottleneck":
                convs = [(1, n_in, width, h), (3, width, width, h_out), (1, width, n_out, h_out)]
            else:
                convs = [(3, n_in, width, h_out), (3, width, n_out, h_out)]
            downsample = (1, n_in, n_out, h_out) if stride != 1 or n_in != n_out else None
            blocks.append((n_in, h, convs, downsample, n_out, h_out))
            h = h_out
    return stem, pooled, blocks


def flops(arch: str, config, *, seq_len: int | None = None, image_size: int | None = None) -> Flops:
    """Forward, backward and training FLOPs per example (see the module docstring for what is
    counted). Raises EstimateError for options that do not apply or a sequence beyond the context."""
    w = workload(arch, config, seq_len=seq_len, image_size=image_size)
    c = config
    skipped = 0  # forward FLOPs of the first layer's input gradient, which backward never computes
    if isinstance(c, GPTConfig):
        t = w.tokens
        forward = _transformer_layers(c.num_layers, t, c.hidden_size, c.mlp_dim) + 2 * t * c.hidden_size * c.vocab_size
    elif isinstance(c, BertConfig):
        t = w.tokens
        forward = _transformer_layers(c.num_layers, t, c.hidden_size, c.mlp_dim)
        if c.pooler:
            forward += 2 * c.hidden_size * c.hidden_size
        if c.num_classes:
            forward += 2 * c.hidden_size * c.num_classes
        if c.mlm_head:
            forward += 2 * t * c.hidden_size * (c.hidden_size + c.vocab_size)
    elif isinstance(c, ViTConfig):
        n = c.num_patches
        patch_embed = 2 * n * c.patch_size**2 * c.num_channels * c.hidden_size
        forward = patch_embed + _transformer_layers(c.num_layers, n + 1, c.hidden_size, c.mlp_dim) + 2 * c.hidden_size * c.num_classes
        skipped = patch_embed
    else:
        stem, _, blocks = _resnet_convs(c, w.image_size)
        convs = stem + [conv for *_, cs, ds, _, _ in blocks for conv in cs + ([ds] if ds else [])]
        forward = sum(2 * hw * hw * k * k * a * z for k, a, z, hw in convs) + 2 * c.out_widths[-1] * c.num_classes
        k, a, z, hw = stem[0]
        skipped = 2 * hw * hw * k * k * a * z
    backward = 2 * forward - skipped
    return Flops(forward=int(forward), backward=int(backward), train=int(forward + backward), tokens=w.tokens)


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class _Acts:
    """Activation bytes per example: ``other`` outside the residual blocks, ``blocks`` per
    block, ``block_inputs`` what checkpointing keeps of each block, ``transient`` how far the
    peak rises above the stored set (an intermediate nothing saves, alive at the peak)."""

    other: int
    blocks: list[int]
    block_inputs: list[int]
    transient: int = 0

    def total(self, checkpointing: bool) -> int:
        if not checkpointing:
            return self.other + sum(self.blocks) + self.transient
        return self.other + sum(self.block_inputs) + max(self.blocks, default=0) + self.transient


def _transformer_block(s: int, h: int, f: int, a: int, *, e: int, kernels: str, dropout: bool, attention_dropout: bool) -> int:
    """Bytes one transformer block stores for backward, per example of s tokens (pre-LN and
    post-LN blocks store the same tensors, in different places). ``e`` is the bytes of a matmul
    input or output. The reference kernels run math attention in fp32 even under autocast (CPU
    autocast keeps scaled_dot_product_attention in fp32) and keep each dropout's random mask in
    the dtype of what it drops; the fused ones keep 1-byte masks and no s x s tensor."""
    stored = 2 * s * h * _FP32  # the two layer-norm inputs: the fp32 residual stream
    stored += 2 * 2 * s * _FP32  # their mean and 1/std
    stored += 3 * s * h * e  # qkv input, attention output (projection input), MLP input
    stored += 2 * s * f * e  # GELU input and output
    if dropout:
        stored += 2 * s * h * (e if kernels == "reference" else 1)  # masks of the two residual dropouts
    if kernels == "reference":
        stored += 3 * s * h * _FP32 + a * s * s * _FP32  # q, k, v and the probabilities
        if attention_dropout:
            stored += 2 * a * s * s * _FP32  # their dropout mask and result
    else:
        stored += 4 * s * h * e + a * s * _FP32  # flash attention: q, k, v, its output, log-sum-exp
    return stored


def _activations(arch: str, config, w: Workload, *, precision: str, kernels: str) -> _Acts:
    if kernels not in KERNELS:
        raise EstimateError(f"unknown kernels {kernels!r}; expected one of: {', '.join(KERNELS)}")
    e = _activation_bytes(precision)
    mixed = e != _FP32
    c = config
    if arch in ("gpt", "bert", "vit"):
        s, h = w.tokens, c.hidden_size
        dropout = c.dropout > 0
        block = _transformer_block(
            s, h, c.mlp_dim, c.num_heads, e=e, kernels=kernels, dropout=dropout, attention_dropout=c.attention_dropout > 0
        )
        blocks = [block] * c.num_layers
        block_inputs = [s * h * _FP32] * c.num_layers
        # the embeddings are fp32, so is the mask of their dropout (1 byte with fused kernels)
        embedding_mask = s * h * (_FP32 if kernels == "reference" else 1) if dropout else 0

        # logits in the compute dtype, their fp32 log-softmax for the loss (and under mixed
        # precision the fp32 copy the loss upcasts to, alive while the log-softmax is computed)
        def loss(v: int) -> int:
            return s * v * (e + _FP32 + (_FP32 if mixed else 0))

        transient = 0
        if arch == "gpt":
            before = s * _INT64 + embedding_mask  # position ids, dropout mask
            # ln_f input, statistics and output (the LM head's input); logits and loss
            after = s * h * (_FP32 + e) + 2 * s * _FP32 + loss(c.vocab_size)
        elif arch == "bert":
            # position and token-type ids, embedding layer-norm input and statistics, dropout mask
            before = 2 * s * _INT64 + s * h * _FP32 + 2 * s * _FP32 + embedding_mask
            after = s * h * _FP32  # the last hidden state
            if c.mlm_head:
                # transform input, GELU input, layer-norm input, statistics and output; the decoder
                # adds its fp32 bias, so logits and their log-softmax are both fp32
                after += 4 * s * h * e + 2 * s * _FP32 + 2 * s * c.vocab_size * _FP32
            # Post-LN under mixed precision: the fp32 block input (held by the caller) and the fp32
            # ln1 output (the MLP's residual) are alive through each block; the matmuls saved
            # 16-bit copies of them, so nothing else keeps them.
            transient = 2 * s * h * _FP32 if mixed else 0
        else:
            before = c.num_channels * c.image_size**2 * e if mixed else 0  # the 16-bit copy of the image
            before += embedding_mask
            # ln_f input, statistics and output: the head reads [CLS] only (under mixed precision a
            # 16-bit copy of it), but the whole output stays alive until the head has run
            after = 2 * s * h * _FP32 + 2 * s * _FP32 + (h * e if mixed else 0) + c.num_classes * (e + 2 * _FP32)
        if kernels == "reference":
            # While the math attention runs, the qkv projection's output, the product with the
            # values and (under CPU autocast) fp32 copies of q, k, v and a 16-bit copy of the
            # probabilities are alive too; in the last block that is the peak when the sequence is
            # long and little is stored after the attention.
            during = 3 * s * h * e + s * h * _FP32
            if mixed:
                during += 3 * s * h * _FP32 + c.num_heads * s * s * e
            stored_after = (
                2 * s * h * e
                + 2 * s * c.mlp_dim * e
                + s * h * _FP32
                + 2 * s * _FP32
                + (2 * s * h * e if dropout else 0)
                + (2 * c.num_heads * s * s * _FP32 if c.attention_dropout > 0 else 0)
            )
            transient = max(transient, transient + during - stored_after - after)
        return _Acts(before + after, blocks, block_inputs, transient=transient)
    return _resnet_activations(c, w.image_size, e)


def _resnet_activations(c: ResNetConfig, image_size: int, e: int) -> _Acts:
    """Walks the forward pass in order: what each conv -> batch norm (-> ReLU) stores, and the
    batch-norm outputs that live only until their ReLU or residual add (the transient peak)."""
    stem, pooled, blocks_spec = _resnet_convs(c, image_size)
    image = c.num_channels * image_size**2 * e if e != _FP32 else 0  # the 16-bit copy of the image
    _, _, z, hw = stem[0]
    fmap = z * hw * hw
    saved = image + fmap * e  # stem conv output (its batch norm's input)
    peak = saved + 2 * fmap * e  # + batch-norm output (until the ReLU) and ReLU output
    saved += fmap * e + z * pooled * pooled * _INT64  # ReLU output (max-pool input), max-pool indices
    other = saved
    blocks, block_inputs = [], []
    for n_in, h_in, convs, downsample, n_out, h_out in blocks_spec:
        start = saved
        for i, (_, _, z, hw) in enumerate(convs):
            fmap = z * hw * hw * e
            saved += fmap  # conv output (batch-norm input)
            if i < len(convs) - 1:
                peak = max(peak, saved + 2 * fmap)  # batch-norm output (until its ReLU) and ReLU output
                saved += fmap  # ReLU output (the next conv's input)
        last = n_out * h_out * h_out * e
        shortcut = 0
        if downsample:
            _, _, z, hw = downsample
            saved += z * hw * hw * e  # projection conv output
            shortcut = z * hw * hw * e  # its batch-norm output, until the add
        peak = max(peak, saved + 3 * last + shortcut)  # last batch-norm output, the sum, its ReLU
        saved += last  # the block's ReLU output
        blocks.append(saved - start)
        block_inputs.append(n_in * h_in * h_in * e)
    head = c.out_widths[-1] * e + c.num_classes * (e + 2 * _FP32)  # pooled features, logits, log-softmax
    saved += head
    other += head
    return _Acts(other, blocks, block_inputs, transient=max(0, peak - saved))


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Memory:
    """Training memory in bytes at one batch size and precision (see the module docstring)."""

    batch_size: int
    precision: str
    checkpointing: bool
    kernels: str
    params: int  # trainable parameters
    weights_bytes: int  # fp32 master weights, batch-norm statistics included
    weight_copy_bytes: int  # the 16-bit copy under mixed precision
    gradient_bytes: int
    optimizer_bytes: int  # AdamW's two moments
    activation_bytes: int
    activation_bytes_per_example: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.weight_copy_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def memory(
    arch: str,
    config,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    checkpointing: bool = False,
    kernels: str = "reference",
    seq_len: int | None = None,
    image_size: int | None = None,
) -> Memory:
    """Weights + gradients + AdamW state + activations for one training step at ``batch_size``.
    Raises EstimateError for an unknown precision or kernels, a non-positive batch, options that
    do not apply to ``arch`` or a sequence beyond the context."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise EstimateError(f"batch_size must be a positive integer, got {batch_size!r}")
    w = workload(arch, config, seq_len=seq_len, image_size=image_size)
    per_example = _activations(arch, config, w, precision=precision, kernels=kernels).total(checkpointing)
    params = count_params(arch, config)
    all_tensors = sum(_numel(s.shape) for s in canonical_spec(arch, config).values())
    mixed = _activation_bytes(precision) == 2
    return Memory(
        batch_size=batch_size,
        precision=precision,
        checkpointing=checkpointing,
        kernels=kernels,
        params=params,
        weights_bytes=all_tensors * _FP32,
        weight_copy_bytes=2 * _matmul_params(arch, config) if mixed else 0,
        gradient_bytes=params * _FP32,
        optimizer_bytes=params * (_STATE_BYTES_PER_PARAM - 2 * _FP32),
        activation_bytes=per_example * batch_size,
        activation_bytes_per_example=per_example,
    )


def _matmul_params(arch: str, config) -> int:
    """Parameters a matmul or convolution reads, which mixed precision casts to 16 bits: dense and
    conv kernels with their biases, and an embedding that doubles as an output head (GPT-2's tied
    LM head, BERT's tied MLM decoder). Layer norms, batch norms, lookups and the position / class
    embeddings (added in fp32) stay fp32."""
    spec = canonical_spec(arch, config)
    kernels = {name.rsplit(".", 1)[0] for name in spec if name.endswith(".kernel")}
    cast = [name for name in spec if name.rsplit(".", 1)[0] in kernels and name.rsplit(".", 1)[1] in ("kernel", "bias")]
    if arch == "gpt":
        cast.append("wte.embedding")
    elif arch == "bert" and config.mlm_head:
        cast.append("embeddings.word.embedding")
    return sum(_numel(spec[name].shape) for name in cast)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def max_batch_size(
    arch: str,
    config,
    *,
    device_bytes: int,
    precision: str = "fp32",
    checkpointing: bool = False,
    kernels: str = "fused",
    headroom: float = 0.1,
    seq_len: int | None = None,
    image_size: int | None = None,
) -> int:
    """The largest batch whose training memory fits in ``(1 - headroom) * device_bytes``; 0 when
    not even one example fits. ``headroom`` is kept free for the CUDA/XLA context, workspaces and
    allocator fragmentation (a rule of thumb, not a measurement)."""
    if not 0.0 <= headroom < 1.0:
        raise EstimateError(f"headroom must be in [0, 1), got {headroom!r}")
    one = memory(
        arch,
        config,
        batch_size=1,
        precision=precision,
        checkpointing=checkpointing,
        kernels=kernels,
        seq_len=seq_len,
        image_size=image_size,
    )
    fixed = one.total_bytes - one.activation_bytes
    free = int(device_bytes * (1.0 - headroom)) - fixed
    return max(0, free // one.activation_bytes_per_example)


def step_time(
    arch: str,
    config,
    *,
    batch_size: int,
    peak_flops: float,
    utilisation: float,
    checkpointing: bool = False,
    seq_len: int | None = None,
    image_size: int | None = None,
) -> float:
    """Seconds per optimizer step: training FLOPs of the batch (plus one recomputed forward with
    checkpointing) over ``peak_flops * utilisation``. ``utilisation`` is model FLOPs utilisation
    in (0, 1] (Chowdhery et al., 2022, arXiv:2204.02311, define it and report 21-46% for large
    transformer runs)."""
    if not 0.0 < utilisation <= 1.0:
        raise EstimateError(f"utilisation must be in (0, 1], got {utilisation!r}")
    if peak_flops <= 0:
        raise EstimateError(f"peak_flops must be positive, got {peak_flops!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise EstimateError(f"batch_size must be a positive integer, got {batch_size!r}")
    f = flops(arch, config, seq_len=seq_len, image_size=image_size)
    per_example = f.train + (f.forward if checkpointing else 0)
    return batch_size * per_example / (peak_flops * utilisation)


# --------------------------------------------------------------------------- summary for `dlzoo info`


@dataclass(frozen=True)
class Estimate:
    params: int
    flops_forward: int  # per example
    flops_train_step: int  # per example, forward + backward
    tokens_or_pixels: str  # what one example is
    weights_bytes: int  # trainable parameters, fp32
    training_state_bytes: int  # weights + grads + AdamW moments, fp32 (16 bytes per trainable parameter)
    activation_bytes_per_example: int  # fp32, reference kernels, no checkpointing

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(arch: str, config, *, seq_len: int | None = None, image_size: int | None = None) -> Estimate:
    """The fp32 summary ``dlzoo info`` prints by default."""
    f = flops(arch, config, seq_len=seq_len, image_size=image_size)
    m = memory(arch, config, seq_len=seq_len, image_size=image_size)
    return Estimate(
        params=m.params,
        flops_forward=f.forward,
        flops_train_step=f.train,
        tokens_or_pixels=workload(arch, config, seq_len=seq_len, image_size=image_size).unit,
        weights_bytes=m.params * _FP32,
        training_state_bytes=m.params * _STATE_BYTES_PER_PARAM,
        activation_bytes_per_example=m.activation_bytes_per_example,
    )
