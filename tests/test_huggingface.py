"""Hugging Face models and tools. GPT-2's projections are transformers' Conv1D (y = x @ W + b, W stored
(in, out)), not nn.Linear, so `kt tune --from-model` found only a GPT-2's lm_head and `kt.nn.structurize`
replaced nothing else, without a word: kt reads a Conv1D as the nn.Linear it computes (`kt.nn.layers.as_linear`).
accelerate's offloading loads a module's weights as it is called: kt's layers under it, and a model under it."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from rich.console import Console
from torch import nn

import kt.cli as cli
import kt.nn as knn
from kt.nn.discover import load_factory, model_ops
from kt.nn.layers import as_linear, conv1d

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

PROJECTIONS = [
    f"transformer.h.{i}.{p}"
    for i in range(2)
    for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


def gpt2(blocks: int = 2) -> tuple[GPT2LMHeadModel, torch.Tensor]:
    """A GPT-2 of two blocks (or `blocks`) and random weights (nothing downloaded), and a batch of 2 x 9
    tokens."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=blocks, n_head=4, n_positions=32, n_inner=80)
    return GPT2LMHeadModel(config).eval(), torch.randint(0, 96, (2, 9))


MAKERS = [
    lambda lin: knn.DenseLinear.from_dense(lin),
    lambda lin: knn.LowRankLinear.from_dense(lin, rank=4),
    lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5),
    lambda lin: knn.MonarchLinear.from_dense(lin, nblocks=4),
    lambda lin: knn.Sum.from_dense(lin, block=(8, 8), density=0.5, rank=2),
    lambda lin: knn.ButterflyLinear.from_dense(lin),
]


def linear_of(conv: Conv1D) -> nn.Linear:
    """The nn.Linear a Conv1D computes, built by hand: its weight the transpose, copied."""
    nx, nf = conv.weight.shape
    linear = nn.Linear(nx, nf)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    return linear


def test_a_conv1d_reads_as_the_linear_it_computes_without_a_copy():
    torch.manual_seed(1)
    conv = Conv1D(nf=24, nx=17)  # odd in-features
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(3, 5, 17)
    assert conv1d(conv) and not conv1d(nn.Linear(17, 24)) and not conv1d(nn.Conv1d(17, 24, 1))
    linear = as_linear(conv)
    assert type(linear) is nn.Linear and (linear.in_features, linear.out_features) == (17, 24)
    assert (
        linear.weight.data_ptr() == conv.weight.data_ptr()
    )  # a view: a large model's weights are not doubled
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-6, atol=1e-6)
    conv.weight.requires_grad_(False)
    conv.eval()
    frozen = as_linear(conv)
    assert not frozen.weight.requires_grad and frozen.bias.requires_grad and not frozen.training


@pytest.mark.parametrize(
    "make",
    MAKERS,
    ids=["dense", "lowrank", "blocksparse", "monarch", "sum", "butterfly"],
)
def test_from_dense_of_a_conv1d_equals_from_dense_of_its_linear(make):
    """from_dense refused a Conv1D ("linear must be an nn.Linear, got Conv1D"); before that check, it read the
    (in, out) weight as an (out, in) one."""
    torch.manual_seed(2)
    square = make is MAKERS[-1]  # a butterfly's weight is square: there only the values tell the transpose
    conv = Conv1D(nf=16, nx=16) if square else Conv1D(nf=32, nx=16)
    with torch.no_grad():
        conv.bias.normal_()
    ours, theirs = make(conv), make(linear_of(conv))
    assert (ours.in_features, ours.out_features) == (16, 16 if square else 32)
    mine, wanted = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == wanted.keys() and all(torch.equal(mine[k], wanted[k]) for k in mine)


def test_structurize_replaces_every_conv1d_of_a_gpt2_and_keeps_its_logits():
    model, ids = gpt2()
    with torch.no_grad():
        want = model(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tied lm_head is left out: nothing to warn of
        replaced = knn.structurize(model, {"transformer.*": knn.DenseLinear.from_dense})
    assert replaced == PROJECTIONS  # it said "the pattern 'transformer.*' matches no nn.Linear of the model"
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert all(not m.training for m in model.modules())  # model.eval() stays in force
    with torch.no_grad():
        got = model(ids).logits
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    # and it trains: every projection's weight gets a gradient
    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(model.get_submodule(name).weight.grad is not None for name in PROJECTIONS)


def test_structurize_makes_a_rule_of_a_conv1d_from_its_linear_and_carries_its_freezing():
    model, _ = gpt2()
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    seen = {}

    def rule(name, linear):
        seen[name] = type(linear)
        return knn.LowRankLinear.from_dense(linear, rank=4) if name.endswith("mlp.c_fc") else None

    assert knn.structurize(model, rule) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert set(seen.values()) == {nn.Linear} and set(seen) == {*PROJECTIONS, "lm_head"}
    first, second = model.transformer.h[0].mlp.c_fc, model.transformer.h[1].mlp.c_fc
    assert all(not p.requires_grad for p in first.factors) and first.bias.requires_grad
    assert all(p.requires_grad for p in second.parameters())


def test_a_parametrized_conv1d_is_read_as_the_linear_its_weight_computes():
    """A Conv1D under torch.nn.utils.parametrize is a ParametrizedConv1D: it was neither a Conv1D to kt nor an
    nn.Linear, so from_dense refused it and structurize passed over it."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(3)
    conv = parametrizations.weight_norm(Conv1D(nf=24, nx=17), dim=1)
    assert conv1d(conv) and type(conv).__name__ == "ParametrizedConv1D"
    x = torch.randn(5, 17)
    with torch.no_grad():
        expected = conv(x)
        torch.testing.assert_close(knn.DenseLinear.from_dense(conv)(x), expected)
    model = nn.Sequential(conv)
    with pytest.warns(
        UserWarning, match=r"^structurize: '0' was under torch.nn.utils.parametrize \(WeightNorm\)"
    ):
        assert knn.structurize(
            model, {"*": lambda linear: knn.LowRankLinear.from_dense(linear, rank=17)}
        ) == ["0"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)  # full rank: the same map


def test_from_model_finds_a_gpt2s_conv1d_ops_and_says_torch_runs_them(monkeypatch):
    """Only the lm_head was found: a GPT-2's eight projections were never tuned."""
    model, ids = gpt2()
    found = model_ops(model, ids, name_prefix="gpt2")
    summaries = {spec.name.rsplit("_", 2)[0]: spec.summary() for spec in found.specs}
    assert summaries == {  # n = the Conv1D's nf, k its nx, B as a DenseLinear made from it stores it
        "gpt2.transformer.h.0.attn.c_attn": "dense 32x96x32 float32 (a: row, b: col)",
        "gpt2.transformer.h.0.attn.c_proj": "dense 32x32x32 float32 (a: row, b: col)",
        "gpt2.transformer.h.0.mlp.c_fc": "dense 32x80x32 float32 (a: row, b: col)",
        "gpt2.transformer.h.0.mlp.c_proj": "dense 32x32x80 float32 (a: row, b: col)",
    }  # block 1 and the lm_head (32 -> 96) have the same math as block 0's: tuned once, listed with them
    assert found.conv1d == PROJECTIONS and found.plain == [*PROJECTIONS, "lm_head"] and not found.subclassed
    assert found.modules[found.specs[0].name] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
        "lm_head",
    ]
    factory = f"{__file__}:gpt2"
    monkeypatch.setattr(cli, "out", Console(file=(said := io.StringIO()), width=400, markup=False))
    assert [spec.summary() for spec in cli._model_specs(factory, set())] == list(summaries.values())
    assert "note: 9 plain nn.Linear or Conv1D layers (transformer.h.0.attn.c_attn, " in said.getvalue()


def gpt2_tokenized():
    """The factory of a user who tokenized the example: a BatchEncoding, a mapping that is no dict."""
    model, ids = gpt2()
    return model, transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def test_a_factorys_batch_encoding_is_read_as_keyword_arguments():
    """It was passed as the model's one positional argument: "the model failed on its example input:
    AttributeError: " (GPT-2 read it as input_ids)."""
    model, args, kwargs = load_factory(f"{__file__}:gpt2_tokenized")
    assert args == () and list(kwargs) == ["input_ids", "attention_mask"] and type(kwargs) is dict
    assert len(model_ops(model, *args, **kwargs).specs) == 4


LAYERS = {
    "dense": knn.DenseLinear.from_dense,
    "lowrank": lambda lin: knn.LowRankLinear.from_dense(lin, rank=4),
    "blocksparse": lambda lin: knn.BlockSparseLinear.from_dense(lin, (8, 8), density=0.5),
    "monarch": lambda lin: knn.MonarchLinear.from_dense(lin, nblocks=4),
    "butterfly": knn.ButterflyLinear.from_dense,
    "sum": lambda lin: knn.Sum.from_dense(lin, (8, 8), density=0.5, rank=2),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_kt_layers_run_under_accelerates_offloading_with_the_classes_kt_names(kind, tmp_path):
    """A LowRankLinear's factors and a Sum's terms sit in submodules the layer never calls, so accelerate never
    loaded them: "kernel: f1 is on meta but the first argument is on cpu". Now that error names the fix,
    PRELOAD_MODULE_CLASSES, with which every layer runs offloaded to the CPU or to disk."""
    accelerate = pytest.importorskip("accelerate")
    from kt.nn.layers import PRELOAD_MODULE_CLASSES

    torch.manual_seed(4)
    x = torch.randn(3, 5, 16)

    def model():
        torch.manual_seed(5)  # the same weights each time
        made = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        knn.structurize(made, {"*": LAYERS[kind]})
        return made

    want = model()
    with torch.no_grad():
        expected = want(x)
    for offload in (
        lambda m: accelerate.cpu_offload(
            m, torch.device("cpu"), preload_module_classes=PRELOAD_MODULE_CLASSES
        ),
        lambda m: accelerate.disk_offload(
            m, str(tmp_path / "disk"), torch.device("cpu"), preload_module_classes=PRELOAD_MODULE_CLASSES
        ),
    ):
        offloaded = model()
        offload(offloaded)
        assert all(p.is_meta for p in offloaded.parameters())  # between calls the weights are elsewhere
        with torch.no_grad():
            assert torch.equal(offloaded(x), expected)
    if kind in ("lowrank", "sum"):
        plain = model()
        accelerate.cpu_offload(plain, torch.device("cpu"))
        with pytest.raises(
            ValueError,
            match=r"weights are on the meta device \(x is on cpu\).*preload_module_classes=\['LowRankLinear', 'Sum'\]",
        ):
            plain(x)


def test_load_checkpoint_and_dispatch_of_a_block_sparse_model_built_on_meta(tmp_path):
    """accelerate's load_checkpoint_and_dispatch sets a checkpoint's tensors one by one, not by load_state_dict.
    Into a model built under init_empty_weights (block patterns drawn at random), on one device it then moved
    the model, whose move wrote the index buffers again from the layers' own patterns: the checkpoint's blocks
    ran in other places, without a word (max error 0.96 here). Now a move takes a pattern set that way; split
    over devices (CPU and disk here), the layers refuse the indices at their first call, and
    kt.nn.load_patterns gives the model the checkpoint's patterns before dispatching."""
    accelerate = pytest.importorskip("accelerate")
    safetensors = pytest.importorskip("safetensors.torch")
    from kt.nn.layers import PRELOAD_MODULE_CLASSES

    def model(seed):
        return nn.Sequential(
            knn.BlockSparseLinear(32, 32, (8, 8), density=0.5, seed=seed),
            nn.ReLU(),
            knn.Sum(
                knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=seed + 1, bias=False),
                knn.LowRankLinear(32, 16, 2, bias=False),
            ),
        )

    torch.manual_seed(0)
    saved = model(7)
    path = str(tmp_path / "model.safetensors")
    safetensors.save_file(saved.state_dict(), path)
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = saved(x)
    with accelerate.init_empty_weights():
        one = model(1)
    one = accelerate.load_checkpoint_and_dispatch(one, path, device_map={"": "cpu"})
    assert one[0].layout == saved[0].layout and one[2].terms[0].layout == saved[2].terms[0].layout
    with torch.no_grad():
        assert torch.equal(one(x), expected)
    split = {"0": "cpu", "1": "cpu", "2": "disk"}
    for take in (False, True):
        with accelerate.init_empty_weights():
            spread = model(1)
        if take:  # the checkpoint's file itself: only its index tensors are read
            assert knn.load_patterns(spread, path) == ["0", "2.terms.0"]
            assert knn.load_patterns(spread, tmp_path) == []  # its folder (model.safetensors): taken already
        spread = accelerate.load_checkpoint_and_dispatch(
            spread, path, device_map=split, offload_folder=str(tmp_path / f"off{take}"),
            preload_module_classes=PRELOAD_MODULE_CLASSES,
        )  # fmt: skip
        with torch.no_grad():
            if take:
                assert torch.equal(spread(x), expected)
            else:
                with pytest.raises(ValueError, match=r"not those of its own pattern .* a checkpoint's pattern is "
                                   r"taken by load_state_dict, or by layer.load_pattern.*accelerate's "
                                   r"load_checkpoint_and_dispatch, call kt.nn.load_patterns\(model, state_dict\) "
                                   r"on the model first\)$"):  # fmt: skip
                    spread(x)


def test_structurize_refuses_a_model_under_accelerates_hooks_and_says_to_structurize_first():
    """Its weights are on the meta device between calls: structurize made meta layers from them, and the model
    then failed at its first call ("kernel: b is on meta but the first argument is on cpu")."""
    accelerate = pytest.importorskip("accelerate")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    accelerate.cpu_offload(model, torch.device("cpu"))
    before = [type(m) for m in model]
    for rules in (
        {"*": knn.DenseLinear.from_dense},
        {"0": lambda lin: knn.BlockSparseLinear.from_dense(lin, (4, 4), density=0.5)},  # refuses meta itself
    ):
        with pytest.raises(
            ValueError,
            match=r"^structurize: '0' is under an accelerate hook .* structurize the model before dispatching it",
        ):
            knn.structurize(model, rules)
    assert [type(m) for m in model] == before  # left as it was
    assert (
        knn.structurize(model, lambda name, lin: None) == []
    )  # a rule that keeps every layer: nothing to refuse
    patched = nn.Sequential(nn.Linear(8, 8))
    patched[0].forward = lambda x: x  # a forward set on the instance (no accelerate): said, not refused
    with pytest.warns(
        UserWarning,
        match="'0' has its forward replaced on the module itself, which stays on the replaced nn.Linear",
    ):
        assert knn.structurize(patched, {"*": knn.DenseLinear.from_dense}) == ["0"]


def test_peft_lora_over_a_structurized_conv1d_base_merges_into_the_same_model():
    """PEFT's LoRA layer over GPT-2's Conv1D has fan_in_fan_out=True: its merge transposes the adapter's delta
    to the Conv1D's (in, out) weight. Once structurize put a DenseLinear (out, in) in as its base layer, the
    merge failed for c_attn (64 x 192) and silently gave another model for the square attn.c_proj (its logits
    0.8 off). Training the adapters over the structured base never needed the flag."""
    peft = pytest.importorskip("peft")
    model, ids = gpt2()
    config = peft.LoraConfig(
        r=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, init_lora_weights=False
    )
    tuned = peft.get_peft_model(model, config)
    with torch.no_grad():
        want = tuned(ids).logits
    with pytest.warns(
        UserWarning,
        match=r"structurize: '.*attn\.c_attn\.base_layer' was a Conv1D held by a Linear with fan_in_fan_out=True \(PEFT's LoRA layer\); it is now False",
    ):
        replaced = knn.structurize(tuned, {"*.base_layer": knn.DenseLinear.from_dense})
    assert len(replaced) == 6  # c_attn, attn.c_proj and mlp.c_proj of two blocks
    with torch.no_grad():
        assert ((tuned(ids).logits - want).norm() / want.norm()).item() < 1e-5
    merged = tuned.merge_and_unload()
    assert type(merged.transformer.h[0].attn.c_proj) is knn.DenseLinear
    with torch.no_grad():
        assert ((merged(ids).logits - want).norm() / want.norm()).item() < 1e-5


def test_a_trainer_resumes_a_structurized_model_from_its_checkpoint(tmp_path):
    """Trainer.train(resume_from_checkpoint=...) into the model structurized afresh failed: from_dense chose the
    block-sparse layers' patterns by their (new random) weights, and load_state_dict refused the checkpoint's
    as another pattern. Now it resumes, and the resumed run ends where the uninterrupted one did, exactly."""
    from transformers import Trainer, TrainingArguments

    def structurized(seed):
        model, _ = gpt2()
        model.train()
        if seed:  # other weights: from_dense keeps other blocks
            torch.manual_seed(seed)
            with torch.no_grad():
                for param in model.parameters():
                    param.normal_(0, 0.02)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            knn.structurize(
                model,
                {
                    "*.mlp.c_proj": lambda lin: knn.BlockSparseLinear.from_dense(
                        lin, block=(8, 8), density=0.5
                    ),
                    "*.mlp.c_fc": lambda lin: knn.Sum.from_dense(lin, block=(8, 8), density=0.5, rank=2),
                },
            )
        return model

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.randint(0, 96, (9,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=2, max_steps=4, save_steps=2, report_to=[], use_cpu=True,
        disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    first = structurized(0)
    Trainer(model=first, args=args, train_dataset=Tokens()).train()
    resumed = structurized(1)
    assert any(  # the patterns differ from the checkpoint's
        not torch.equal(a, b)
        for (name, a), b in zip(resumed.state_dict().items(), first.state_dict().values())
        if name.endswith("col_indices")
    )
    Trainer(model=resumed, args=args, train_dataset=Tokens()).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-2")
    )
    for (name, a), b in zip(first.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_structurize_as_rebuilds_a_saved_structurized_model_from_its_state_dict(tmp_path):
    """A structurized model's checkpoint (save_pretrained) loaded only into the model structurized again with
    the same rules, ranks and densities (from_dense run again on dense weights). structurize_as reads what each
    layer is from the state_dict's keys and shapes: the fresh model, on the CPU or on the meta device, then
    loads the checkpoint and gives the saved model's logits exactly. A Conv1D's DenseLinear is told by its
    weight's (out, in) shape, a square one by `dense`."""
    safetensors = pytest.importorskip("safetensors.torch")
    model, ids = gpt2()
    rules = {
        "*.0.mlp.c_fc": lambda lin: knn.LowRankLinear.from_dense(lin, rank=4),
        "*.1.mlp.c_fc": lambda lin: knn.Sum.from_dense(lin, block=(8, 8), density=0.5, rank=2),
        "*.mlp.c_proj": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5),
        "*.0.attn.c_proj": lambda lin: knn.MonarchLinear.from_dense(lin, nblocks=4),
        "*.1.attn.c_proj": knn.DenseLinear.from_dense,  # 32 -> 32: square, its weight alike in shape
        "*.0.attn.c_attn": knn.DenseLinear.from_dense,  # 32 -> 96: not square
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = knn.structurize(model, rules)
    model.save_pretrained(tmp_path)
    state = safetensors.load_file(str(tmp_path / "model.safetensors"))
    with torch.no_grad():
        want = model(ids).logits
    unnamed, _ = gpt2()  # without `dense`, the square DenseLinear's weight is read as its Conv1D's
    assert knn.structurize_as(unnamed, state) == [
        name for name in made if name != "transformer.h.1.attn.c_proj"
    ]
    unnamed.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert not torch.allclose(unnamed(ids).logits, want)
    fresh, _ = gpt2()
    assert knn.structurize_as(fresh, state, dense="*.attn.c_proj") == made
    kinds = {name: type(fresh.get_submodule(name)).__name__ for name in made}
    assert kinds == {name: type(model.get_submodule(name)).__name__ for name in made}
    assert type(fresh.transformer.h[1].attn.c_attn).__name__ == "Conv1D"  # a weight of its own shape: kept
    assert fresh.load_state_dict(state, strict=False).missing_keys == ["lm_head.weight"]  # tied to wte
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, want)
    with torch.device("meta"):
        empty = GPT2LMHeadModel(model.config).eval()
    knn.structurize_as(empty, state, dense=["transformer.h.1.attn.c_proj"])
    empty.load_state_dict(model.state_dict(), assign=True)
    with torch.no_grad():
        assert torch.equal(empty(ids).logits, want)
    wrong = {**state, "transformer.h.0.mlp.c_fc.factors.0": torch.zeros(31, 4)}
    with pytest.raises(ValueError, match=r"^structurize_as: 'transformer.h.0.mlp.c_fc': the state_dict's "
                       r"transformer.h.0.mlp.c_fc.factors.0 is \(31, 4\), where a LowRankLinear of its 32 -> 80 "
                       r"features has \(32, 4\)$"):  # fmt: skip
        knn.structurize_as(gpt2()[0], wrong)
    with pytest.raises(TypeError, match=r"^structurize_as: state_dict must be a mapping of names to tensors"):
        knn.structurize_as(gpt2()[0], [state])
    with pytest.raises(
        TypeError, match=r"^structurize_as: dense must be a glob pattern or a sequence of them"
    ):
        knn.structurize_as(gpt2()[0], state, dense=[3])


def test_a_structurized_gpt2_exports_to_onnx_and_runs_in_onnx_runtime():
    """The README's ONNX recipe on a Hugging Face model: torch.export of a structurized GPT-2 (batch and
    sequence dims dynamic), kt's op decomposed, torch.onnx.export, then ONNX Runtime gives the model's logits
    at other sizes. One block: the export's time grows with the graph, and one block holds each structurized
    layer (the MLP's two, the attention's projection) as two do."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model, ids = gpt2(blocks=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        knn.structurize(
            model,
            {
                "*.mlp.c_fc": lambda lin: knn.LowRankLinear.from_dense(lin, rank=8),
                "*.mlp.c_proj": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5),
                "*.attn.c_proj": lambda lin: knn.MonarchLinear.from_dense(lin, nblocks=4),
            },
        )

    class Logits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(input_ids=ids, use_cache=False).logits

    wrapped = Logits(model).eval()
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=32)},)
    program = torch.export.export(wrapped, (ids,), dynamic_shapes=dims, strict=False)
    program = program.run_decompositions(knn.decompositions())
    proto = torch.onnx.export(program, dynamo=True, verbose=False).model_proto
    session = ort.InferenceSession(proto.SerializeToString())
    for shape in [(2, 9), (1, 17)]:
        tokens = torch.randint(0, 96, shape)
        (got,) = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
        with torch.no_grad():
            want = wrapped(tokens)
        assert (torch.from_numpy(got) - want).norm() / want.norm() < 1e-5


def test_structurizing_a_tied_output_layer_unties_the_config():
    """GPT-2's lm_head shares the embedding's weight (config.tie_word_embeddings). Structurized, it holds
    weights of its own, but the config still said tied: transformers' tie_weights (which
    resize_token_embeddings calls) then hung the embedding's weight on the kt layer, a stray parameter, and the
    kt head kept 96 outputs while the embedding grew to 100, without a word. The config now says untied, and
    save_pretrained writes that."""
    model, ids = gpt2()
    with pytest.warns(UserWarning, match=r"no longer tied; model.config.tie_word_embeddings is now False"):
        knn.structurize(model, {"lm_head": lambda lin: knn.LowRankLinear.from_dense(lin, rank=8)})
    assert model.config.tie_word_embeddings is False
    model.tie_weights()
    assert [name for name, _ in model.lm_head.named_parameters()] == ["factors.0", "factors.1"]
    with pytest.raises(AttributeError):  # loud: transformers resizes an output layer by its weight
        model.resize_token_embeddings(100)
    other, _ = gpt2()  # a layer other than the output embeddings: the config is left as it is
    knn.structurize(other, {"*.0.mlp.c_fc": knn.DenseLinear.from_dense})
    assert other.config.tie_word_embeddings is True


def test_structurize_as_names_a_save_pretrained_file_whose_names_are_the_checkpoints_older_ones(tmp_path):
    """transformers 5's save_pretrained writes a SegFormer under its checkpoints' older names (from_pretrained
    renames them as it loads): structurize_as replaced nothing, without a word, and load_state_dict listed every
    key. It now says so and how to save the model's own names; given those, the model comes back bit for bit."""
    from safetensors.torch import load_file, save_file
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    def segformer():
        torch.manual_seed(0)
        config = SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
            decoder_hidden_size=32, num_labels=3, patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
        )  # fmt: skip
        return SegformerForSemanticSegmentation(config).eval()

    model, x = segformer(), torch.randn(2, 3, 32, 32)
    knn.structurize(model, lambda _, lin: knn.LowRankLinear.from_dense(lin, rank=4) if min(
        lin.in_features, lin.out_features) >= 16 else None)  # fmt: skip
    with torch.no_grad():
        logits = model(x).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    if all(key in model.state_dict() for key in saved):
        pytest.skip("this transformers saves a SegFormer under its own module names")
    with pytest.raises(ValueError, match=r"^structurize_as: the state_dict holds a kt layer's tensors under '[^']+' "
                                         r"\('[^']+\.factors\.0', and \d+ more keys\), which is no module of the model; "
                                         r".*save_pretrained.*safetensors.torch.save_file\(model.state_dict\(\), path\)"):  # fmt: skip
        knn.structurize_as(segformer(), saved)
    sparse = segformer()
    knn.structurize(
        sparse, {"*.mlp.fc1": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5)}
    )
    sparse.save_pretrained(tmp_path / "sparse")
    drawn = segformer()  # another pattern drawn: load_patterns left it, without a word
    knn.structurize(
        drawn,
        {
            "*.mlp.fc1": lambda lin: knn.BlockSparseLinear(
                lin.in_features, lin.out_features, block=(8, 8), density=0.5
            )
        },
    )
    with pytest.raises(ValueError, match=r"^load_patterns: the state_dict holds a block pattern under '[^']+' \(and "
                                         r"\d+ more layers?\), which is no BlockSparseLinear of the model; a checkpoint"):  # fmt: skip
        knn.load_patterns(drawn, tmp_path / "sparse")
    save_file(model.state_dict(), tmp_path / "own.safetensors")
    again, own = segformer(), load_file(tmp_path / "own.safetensors")
    assert knn.structurize_as(again, own)
    again.load_state_dict(own)
    with torch.no_grad():
        assert torch.equal(again(x).logits, logits)


def test_a_subclass_of_conv1d_is_left_alone_with_a_word_by_structurize_and_from_model():
    """It was left alone without one (structurize), or said to match nothing, and `kt tune --from-model`
    neither tuned it nor listed it as skipped."""

    class Mine(Conv1D):
        pass

    model = nn.Sequential(Mine(8, 8), nn.Linear(8, 8))
    with pytest.warns(
        UserWarning, match=r"'0' is a Mine: a subclass of transformers' Conv1D, whose forward may"
    ):
        assert knn.structurize(model, {"*": knn.DenseLinear.from_dense}) == ["1"]
    found = model_ops(nn.Sequential(Mine(8, 8)), torch.randn(2, 8))
    assert found.skipped == [("0", "a Mine: a subclass of transformers' Conv1D, whose forward may differ")]
