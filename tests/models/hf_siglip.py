"""A faithful re-implementation (eval mode) of Hugging Face transformers' modeling_siglip.py image
side, with its module names, so state_dict() has the keys of a real checkpoint:
SiglipVisionModel (vision_model.embeddings.patch_embedding / position_embedding,
encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1/fc2},
post_layernorm, head.{probe, attention (nn.MultiheadAttention: in_proj_weight/bias, out_proj),
layernorm, mlp}) and a SiglipModel (the same vision_model plus a text_model and logit_scale /
logit_bias; the text side is only there for its key names).

pooler_output = head(post_layernorm(encoder(embeddings(x)))); with interpolate_pos_encoding the
position embedding is resized bicubic (align_corners False, no antialias) as HF does."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACT = {"gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "gelu": nn.GELU}


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.patch_size = c["patch_size"]
        self.patch_embedding = nn.Conv2d(c["num_channels"], c["hidden_size"], self.patch_size, self.patch_size)
        self.num_positions = (c["image_size"] // self.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_positions, c["hidden_size"])
        self.register_buffer("position_ids", torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def interpolate_pos_encoding(self, n, height, width):
        if n == self.num_positions and height == width:
            return self.position_embedding(self.position_ids)
        w = self.position_embedding.weight.unsqueeze(0)
        dim = w.shape[-1]
        g = int(math.sqrt(self.num_positions))
        w = w.reshape(1, g, g, dim).permute(0, 3, 1, 2)
        w = F.interpolate(w, size=(height // self.patch_size, width // self.patch_size), mode="bicubic",
                          align_corners=False)
        return w.permute(0, 2, 3, 1).reshape(1, -1, dim)

    def forward(self, x, interpolate_pos_encoding=False):
        _, _, h, w = x.shape
        e = self.patch_embedding(x).flatten(2).transpose(1, 2)
        if interpolate_pos_encoding:
            return e + self.interpolate_pos_encoding(e.shape[1], h, w)
        return e + self.position_embedding(self.position_ids)


class SiglipAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_dim, self.num_heads = c["hidden_size"], c["num_attention_heads"]
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        a = torch.matmul(q, k.transpose(2, 3)) * self.scale
        a = F.softmax(a, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, N, self.embed_dim)
        return self.out_proj(o)


class SiglipMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.activation_fn = ACT[c["hidden_act"]]()
        self.fc1 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.fc2 = nn.Linear(c["intermediate_size"], c["hidden_size"])

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = SiglipAttention(c)
        self.layer_norm1 = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.mlp = SiglipMLP(c)
        self.layer_norm2 = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, c["hidden_size"]))
        self.attention = nn.MultiheadAttention(c["hidden_size"], c["num_attention_heads"], batch_first=True)
        self.layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.mlp = SiglipMLP(c)

    def forward(self, x):
        probe = self.probe.repeat(x.shape[0], 1, 1)
        h = self.attention(probe, x, x)[0]
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]


class SiglipVisionTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(c)
        self.encoder = SiglipEncoder(c)
        self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.use_head = c.get("vision_use_head", True)
        if self.use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(c)

    def forward(self, x, interpolate_pos_encoding=False):
        h = self.post_layernorm(self.encoder(self.embeddings(x, interpolate_pos_encoding)))
        return h, (self.head(h) if self.use_head else None)


VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6)


class SiglipVisionModel(nn.Module):
    def __init__(self, **vision_config):
        super().__init__()
        self.config = dict(VISION_DEFAULTS, **vision_config)
        self.vision_model = SiglipVisionTransformer(self.config)

    def forward(self, x, interpolate_pos_encoding=False):
        """(last_hidden_state, pooler_output)."""
        return self.vision_model(x, interpolate_pos_encoding)


class SiglipTextModelStub(nn.Module):
    """The text tower's modules under their real names (text_model.embeddings, encoder, final_layer_norm,
    head); never run here."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(50, c["hidden_size"])
        self.embeddings.position_embedding = nn.Embedding(16, c["hidden_size"])
        self.encoder = SiglipEncoder(c)
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.head = nn.Linear(c["hidden_size"], c["hidden_size"])


class SiglipModel(nn.Module):
    def __init__(self, **vision_config):
        super().__init__()
        self.config = dict(VISION_DEFAULTS, **vision_config)
        self.text_model = SiglipTextModelStub(dict(self.config, num_hidden_layers=1))
        self.vision_model = SiglipVisionTransformer(self.config)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))

    def forward(self, x, interpolate_pos_encoding=False):
        return self.vision_model(x, interpolate_pos_encoding)


class SiglipForImageClassification(nn.Module):
    """vision_model (its pooling head built but unused) and classifier on the mean of last_hidden_state."""

    def __init__(self, num_labels=10, **vision_config):
        super().__init__()
        self.config = dict(VISION_DEFAULTS, **vision_config)
        self.vision_model = SiglipVisionTransformer(self.config)
        self.classifier = nn.Linear(self.config["hidden_size"], num_labels)

    def forward(self, x, interpolate_pos_encoding=False):
        h, _ = self.vision_model(x, interpolate_pos_encoding)
        return h, self.classifier(h.mean(dim=1))
