"""Re-implementation of Hugging Face transformers' SwinForImageClassification (modeling_swin.py)
for parity tests; transformers is not installed here.  Module names give the real state-dict
keys (swin.embeddings.*, swin.encoder.layers.s.blocks.m.*, swin.encoder.layers.s.downsample.*,
swin.layernorm.*, classifier.*) and the forward follows HF's semantics:

  * SwinPatchEmbeddings zero-pads the image right/bottom to a multiple of the patch size;
  * SwinLayer.set_shift_and_window_size: if min(H, W) <= window_size, shift = 0 and
    window_size = min(H, W) (the "min" rule).  Like HF, this MUTATES the layer, so build a fresh
    model for every input size (HF keeps the reduced shift for later, larger inputs);
  * maybe_pad: zero-pad the normalised map bottom/right to a window multiple, THEN roll; the mask
    is built on the padded size; crop after the reverse roll;
  * separate query/key/value Linear layers, scores / sqrt(head_dim) + relative position bias
    (+ mask), softmax;
  * SwinPatchMerging zero-pads odd sides, cat(x0, x1, x2, x3), LayerNorm(4C) (default eps
    1e-5, NOT config.layer_norm_eps), Linear without bias; embeddings.norm is also a plain
    LayerNorm(embed_dim); the block norms and swin.layernorm use config.layer_norm_eps;
  * mean over tokens (AdaptiveAvgPool1d), classifier.

Not reproduced: use_absolute_embeddings (HF's (1, N+1, C) table does not even add to N tokens),
masked-image-modelling tokens, head_mask, output_attentions, interpolate_pos_encoding.
"""

import json
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SwinConfig", "SwinForImageClassification", "collect_activations", "randomize_"]


class SwinConfig(object):
    model_type = "swin"

    def __init__(self, image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, drop_path_rate=0.1, hidden_act="gelu",
                 use_absolute_embeddings=False, layer_norm_eps=1e-5, num_labels=1000, id2label=None):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.depths = list(depths)
        self.num_layers = len(depths)
        self.num_heads = list(num_heads)
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.hidden_act = hidden_act
        self.use_absolute_embeddings = use_absolute_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_size = int(embed_dim * 2 ** (len(depths) - 1))
        self.id2label = id2label or {i: "LABEL_%d" % i for i in range(num_labels)}
        self.num_labels = len(self.id2label)

    def to_json(self):
        """A config.json like save_pretrained writes (the keys the converter and HF read)."""
        d = OrderedDict([
            ("architectures", ["SwinForImageClassification"]), ("model_type", "swin"),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob), ("depths", self.depths),
            ("drop_path_rate", self.drop_path_rate), ("embed_dim", self.embed_dim), ("encoder_stride", 32),
            ("hidden_act", self.hidden_act), ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("hidden_size", self.hidden_size), ("id2label", {str(k): v for k, v in self.id2label.items()}),
            ("image_size", self.image_size), ("initializer_range", 0.02),
            ("label2id", {v: k for k, v in self.id2label.items()}), ("layer_norm_eps", self.layer_norm_eps),
            ("mlp_ratio", self.mlp_ratio), ("num_channels", self.num_channels), ("num_heads", self.num_heads),
            ("num_layers", self.num_layers), ("patch_size", self.patch_size), ("qkv_bias", self.qkv_bias),
            ("torch_dtype", "float32"), ("transformers_version", "4.40.0"),
            ("use_absolute_embeddings", self.use_absolute_embeddings), ("window_size", self.window_size),
        ])
        return json.dumps(d, indent=2)


def window_partition(input_feature, window_size):
    batch_size, height, width, num_channels = input_feature.shape
    input_feature = input_feature.view(batch_size, height // window_size, window_size, width // window_size,
                                       window_size, num_channels)
    return input_feature.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, num_channels)


def window_reverse(windows, window_size, height, width):
    num_channels = windows.shape[-1]
    windows = windows.view(-1, height // window_size, width // window_size, window_size, window_size, num_channels)
    return windows.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, num_channels)


class SwinPatchEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        image_size, patch_size = config.image_size, config.patch_size
        image_size = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        patch_size = patch_size if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = config.num_channels
        self.grid_size = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, kernel_size=patch_size, stride=patch_size)

    def maybe_pad(self, pixel_values, height, width):
        if width % self.patch_size[1] != 0:
            pixel_values = F.pad(pixel_values, (0, self.patch_size[1] - width % self.patch_size[1]))
        if height % self.patch_size[0] != 0:
            pixel_values = F.pad(pixel_values, (0, 0, 0, self.patch_size[0] - height % self.patch_size[0]))
        return pixel_values

    def forward(self, pixel_values):
        _, num_channels, height, width = pixel_values.shape
        pixel_values = self.maybe_pad(pixel_values, height, width)
        embeddings = self.projection(pixel_values)
        _, _, height, width = embeddings.shape
        return embeddings.flatten(2).transpose(1, 2), (height, width)


class SwinEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.use_absolute_embeddings:
            raise NotImplementedError("use_absolute_embeddings is not reproduced (see the module docstring)")
        self.patch_embeddings = SwinPatchEmbeddings(config)
        self.patch_grid = self.patch_embeddings.grid_size
        self.mask_token = None
        self.position_embeddings = None
        self.norm = nn.LayerNorm(config.embed_dim)   # default eps, as in HF
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values):
        embeddings, output_dimensions = self.patch_embeddings(pixel_values)
        embeddings = self.norm(embeddings)
        return self.dropout(embeddings), output_dimensions


class SwinPatchMerging(nn.Module):
    def __init__(self, input_resolution, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def maybe_pad(self, input_feature, height, width):
        if (height % 2 == 1) or (width % 2 == 1):
            input_feature = F.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))
        return input_feature

    def forward(self, input_feature, input_dimensions):
        height, width = input_dimensions
        batch_size, dim, num_channels = input_feature.shape
        input_feature = input_feature.view(batch_size, height, width, num_channels)
        input_feature = self.maybe_pad(input_feature, height, width)
        input_feature_0 = input_feature[:, 0::2, 0::2, :]
        input_feature_1 = input_feature[:, 1::2, 0::2, :]
        input_feature_2 = input_feature[:, 0::2, 1::2, :]
        input_feature_3 = input_feature[:, 1::2, 1::2, :]
        input_feature = torch.cat([input_feature_0, input_feature_1, input_feature_2, input_feature_3], -1)
        input_feature = input_feature.view(batch_size, -1, 4 * num_channels)
        return self.reduction(self.norm(input_feature))


class SwinSelfAttention(nn.Module):
    def __init__(self, config, dim, num_heads, window_size):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError("The hidden size (%d) is not a multiple of the number of attention heads (%d)"
                             % (dim, num_heads))
        self.num_attention_heads = num_heads
        self.attention_head_size = int(dim / num_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.window_size = tuple(window_size) if isinstance(window_size, (list, tuple)) else (window_size, window_size)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1), num_heads))
        coords_h = torch.arange(self.window_size[0])
        coords_w = torch.arange(self.window_size[1])
        coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += self.window_size[0] - 1
        relative_coords[:, :, 1] += self.window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.query = nn.Linear(self.all_head_size, self.all_head_size, bias=config.qkv_bias)
        self.key = nn.Linear(self.all_head_size, self.all_head_size, bias=config.qkv_bias)
        self.value = nn.Linear(self.all_head_size, self.all_head_size, bias=config.qkv_bias)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None):
        batch_size, dim, num_channels = hidden_states.shape
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        relative_position_bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        relative_position_bias = relative_position_bias.view(
            self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1)
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
        attention_scores = attention_scores + relative_position_bias.unsqueeze(0)
        if attention_mask is not None:
            mask_shape = attention_mask.shape[0]
            attention_scores = attention_scores.view(batch_size // mask_shape, mask_shape, self.num_attention_heads,
                                                     dim, dim)
            attention_scores = attention_scores + attention_mask.unsqueeze(1).unsqueeze(0)
            attention_scores = attention_scores.view(-1, self.num_attention_heads, dim, dim)
        attention_probs = self.dropout(F.softmax(attention_scores, dim=-1))
        context_layer = torch.matmul(attention_probs, value_layer).permute(0, 2, 1, 3).contiguous()
        return context_layer.view(context_layer.size()[:-2] + (self.all_head_size,))


class SwinSelfOutput(nn.Module):
    def __init__(self, config, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states):
        return self.dropout(self.dense(hidden_states))


class SwinAttention(nn.Module):
    def __init__(self, config, dim, num_heads, window_size):
        super().__init__()
        self.self = SwinSelfAttention(config, dim, num_heads, window_size)
        self.output = SwinSelfOutput(config, dim)

    def forward(self, hidden_states, attention_mask=None):
        return self.output(self.self(hidden_states, attention_mask))


class SwinIntermediate(nn.Module):
    def __init__(self, config, dim):
        super().__init__()
        self.dense = nn.Linear(dim, int(config.mlp_ratio * dim))
        if config.hidden_act != "gelu":
            raise NotImplementedError("hidden_act %r" % config.hidden_act)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class SwinOutput(nn.Module):
    def __init__(self, config, dim):
        super().__init__()
        self.dense = nn.Linear(int(config.mlp_ratio * dim), dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states):
        return self.dropout(self.dense(hidden_states))


class SwinLayer(nn.Module):
    def __init__(self, config, dim, input_resolution, num_heads, shift_size=0):
        super().__init__()
        self.shift_size = shift_size
        self.window_size = config.window_size
        self.input_resolution = input_resolution
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = SwinAttention(config, dim, num_heads, window_size=self.window_size)
        self.drop_path = nn.Identity()
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.intermediate = SwinIntermediate(config, dim)
        self.output = SwinOutput(config, dim)

    def set_shift_and_window_size(self, input_resolution):
        if min(input_resolution) <= self.window_size:
            # if window size is larger than input resolution, we don't partition windows
            self.shift_size = 0
            self.window_size = min(input_resolution)

    def get_attn_mask(self, height, width, dtype):
        if self.shift_size > 0:
            img_mask = torch.zeros((1, height, width, 1), dtype=dtype)
            height_slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                             slice(-self.shift_size, None))
            width_slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                            slice(-self.shift_size, None))
            count = 0
            for height_slice in height_slices:
                for width_slice in width_slices:
                    img_mask[:, height_slice, width_slice, :] = count
                    count += 1
            mask_windows = window_partition(img_mask, self.window_size)
            mask_windows = mask_windows.view(-1, self.window_size * self.window_size)
            attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        else:
            attn_mask = None
        return attn_mask

    def maybe_pad(self, hidden_states, height, width):
        pad_right = (self.window_size - width % self.window_size) % self.window_size
        pad_bottom = (self.window_size - height % self.window_size) % self.window_size
        pad_values = (0, 0, 0, pad_right, 0, pad_bottom)
        return F.pad(hidden_states, pad_values), pad_values

    def forward(self, hidden_states, input_dimensions):
        self.set_shift_and_window_size(input_dimensions)
        height, width = input_dimensions
        batch_size, _, channels = hidden_states.size()
        shortcut = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states = hidden_states.view(batch_size, height, width, channels)
        hidden_states, pad_values = self.maybe_pad(hidden_states, height, width)
        _, height_pad, width_pad, _ = hidden_states.shape
        if self.shift_size > 0:
            shifted_hidden_states = torch.roll(hidden_states, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        else:
            shifted_hidden_states = hidden_states
        hidden_states_windows = window_partition(shifted_hidden_states, self.window_size)
        hidden_states_windows = hidden_states_windows.view(-1, self.window_size * self.window_size, channels)
        attn_mask = self.get_attn_mask(height_pad, width_pad, dtype=hidden_states.dtype)
        attention_output = self.attention(hidden_states_windows, attn_mask)
        attention_windows = attention_output.view(-1, self.window_size, self.window_size, channels)
        shifted_windows = window_reverse(attention_windows, self.window_size, height_pad, width_pad)
        if self.shift_size > 0:
            attention_windows = torch.roll(shifted_windows, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        else:
            attention_windows = shifted_windows
        was_padded = pad_values[3] > 0 or pad_values[5] > 0
        if was_padded:
            attention_windows = attention_windows[:, :height, :width, :].contiguous()
        attention_windows = attention_windows.view(batch_size, height * width, channels)
        hidden_states = shortcut + self.drop_path(attention_windows)
        layer_output = self.layernorm_after(hidden_states)
        layer_output = self.intermediate(layer_output)
        return hidden_states + self.output(layer_output)


class SwinStage(nn.Module):
    def __init__(self, config, dim, input_resolution, depth, num_heads, downsample):
        super().__init__()
        self.config = config
        self.dim = dim
        self.blocks = nn.ModuleList([
            SwinLayer(config, dim, input_resolution, num_heads, shift_size=0 if i % 2 == 0 else config.window_size // 2)
            for i in range(depth)])
        self.downsample = downsample(input_resolution, dim=dim, norm_layer=nn.LayerNorm) if downsample else None
        self.pointing = False

    def forward(self, hidden_states, input_dimensions, trace=None, index=0):
        height, width = input_dimensions
        for i, layer_module in enumerate(self.blocks):
            hidden_states = layer_module(hidden_states, input_dimensions)
            if trace is not None:
                trace("layers.%d.blocks.%d" % (index, i), hidden_states, (height, width))
        if self.downsample is not None:
            height_downsampled, width_downsampled = (height + 1) // 2, (width + 1) // 2
            hidden_states = self.downsample(hidden_states, input_dimensions)
            if trace is not None:
                trace("layers.%d.downsample" % index, hidden_states, (height_downsampled, width_downsampled))
            return hidden_states, (height_downsampled, width_downsampled)
        return hidden_states, (height, width)


class SwinEncoder(nn.Module):
    def __init__(self, config, grid_size):
        super().__init__()
        self.num_layers = len(config.depths)
        self.config = config
        self.layers = nn.ModuleList([
            SwinStage(config, int(config.embed_dim * 2 ** i), (grid_size[0] // (2 ** i), grid_size[1] // (2 ** i)),
                      config.depths[i], config.num_heads[i],
                      downsample=SwinPatchMerging if (i < self.num_layers - 1) else None)
            for i in range(self.num_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, input_dimensions, trace=None):
        for i, layer_module in enumerate(self.layers):
            hidden_states, input_dimensions = layer_module(hidden_states, input_dimensions, trace, i)
        return hidden_states, input_dimensions


class SwinModel(nn.Module):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.num_layers = len(config.depths)
        self.num_features = int(config.embed_dim * 2 ** (self.num_layers - 1))
        self.embeddings = SwinEmbeddings(config)
        self.encoder = SwinEncoder(config, self.embeddings.patch_grid)
        self.layernorm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.pooler = nn.AdaptiveAvgPool1d(1) if add_pooling_layer else None

    def forward(self, pixel_values, trace=None):
        embedding_output, input_dimensions = self.embeddings(pixel_values)
        if trace is not None:
            trace("patch_embed", embedding_output, input_dimensions)
        sequence_output, input_dimensions = self.encoder(embedding_output, input_dimensions, trace)
        sequence_output = self.layernorm(sequence_output)
        if trace is not None:
            trace("norm", sequence_output, input_dimensions)
        pooled_output = None
        if self.pooler is not None:
            pooled_output = torch.flatten(self.pooler(sequence_output.transpose(1, 2)), 1)
        return sequence_output, pooled_output


class SwinForImageClassification(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.swin = SwinModel(config)
        self.classifier = nn.Linear(self.swin.num_features, config.num_labels) if config.num_labels > 0 \
            else nn.Identity()

    def forward(self, pixel_values, trace=None):
        _, pooled_output = self.swin(pixel_values, trace)
        return self.classifier(pooled_output)


def randomize_(model, seed=0, table_std=0.5):
    try:
        from . import swin_ref
    except ImportError:
        import swin_ref
    return swin_ref.randomize_(model, seed=seed, table_std=table_std)


def collect_activations(model, x):
    """(logits, {lmv trace name: image-0 activation (H, W, C)})."""
    acts = OrderedDict()

    def trace(name, t, hw):
        acts[name] = t[0].detach().reshape(hw[0], hw[1], -1).numpy().copy()
    with torch.no_grad():
        logits = model(x, trace)
    return logits.numpy(), acts


def ms_to_hf(sd):
    """Microsoft-named Swin state dict -> SwinForImageClassification keys (qkv split into
    query/key/value), for cross-checking this re-implementation against swin_ref."""
    out = OrderedDict()
    for k, v in sd.items():
        if k.endswith("attn_mask"):
            continue
        p = k.split(".")
        if k.startswith("patch_embed.proj."):
            out["swin.embeddings.patch_embeddings.projection." + p[-1]] = v
        elif k.startswith("patch_embed.norm."):
            out["swin.embeddings.norm." + p[-1]] = v
        elif k.startswith("norm."):
            out["swin.layernorm." + p[-1]] = v
        elif k.startswith("head."):
            out["classifier." + p[-1]] = v
        elif p[2] == "downsample":
            out["swin.encoder." + k] = v
        else:
            base = "swin.encoder.layers.%s.blocks.%s." % (p[1], p[3])
            rest = ".".join(p[4:])
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                    out[base + "attention.self.%s.%s" % (name, p[-1])] = part.clone()
                continue
            rest = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
                    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
                    "attn.relative_position_index": "attention.self.relative_position_index",
                    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}.get(
                rest.rsplit(".", 1)[0] if not rest.startswith("attn.relative") else rest, None) or rest
            if not rest.startswith("attention.self.relative"):
                rest = rest + "." + p[-1]
            out[base + rest] = v
    return out
