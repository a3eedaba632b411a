"""`jaxbp train --model gpt|lstm` and `jaxbp sample`: the character models, their per-epoch
report in nats per character, and the baselines a run is compared with."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxbp import charlm, checkpoint, datasets
from jaxbp.cli._common import UsageError, bad_input
from jaxbp.cli._train_options import SEQUENCE_MODELS
from jaxbp.layers import char_rnn, gpt
from jaxbp.train import CHECKPOINT_NAME


def sequence_model(config: dict):
    """The network a run's settings (config.json, or the parsed arguments) name: gpt or lstm."""
    vocab = datasets.vocabulary("names").size
    if config["model"] == "lstm":
        return char_rnn(vocab, hidden=config["width"])
    return gpt(
        vocab, config["context"], num_layers=config["depth"], features=config["width"],
        num_heads=config["heads"],
    )  # fmt: skip


def describe_run(args, info, params) -> tuple[str, str]:
    """What `jaxbp train` prints of a character model's data and network, in a line."""
    data = (
        f"names ({info.n_train:,} train and {info.n_test:,} validation windows of "
        f"{args.context} characters)"
    )
    size = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    if args.model == "gpt":
        network = f"{args.depth} blocks, width {args.width}, {args.heads} heads"
    else:
        network = f"embedding 64, {args.width} hidden units"
    return data, f"{args.model} ({network}; {size:,} parameters)"


def reported(args, on_epoch):
    """on_epoch, and for a character model a line per epoch: the losses in nats per character."""
    if args.model not in SEQUENCE_MODELS:
        return on_epoch

    def report(epoch, metrics):
        on_epoch(epoch, metrics)
        print(
            f"epoch {epoch}/{args.epochs}: train {metrics['loss']:.4f}, validation "
            f"{metrics['eval_loss']:.4f} nats/char ({metrics['epoch_time']:.1f} s)",
            flush=True,
        )

    return report


def report_baselines(args, train_data, eval_data, history, out: Path) -> None:
    """The run's validation loss beside a bigram's and makemore's MLP's, on the same characters;
    the three numbers go to baselines.json too."""
    vocab = datasets.vocabulary("names").size
    bigram = charlm.bigram_loss(charlm.bigram(*train_data, vocab), *eval_data)
    print("baselines: fitting makemore's MLP on the same split ...", flush=True)
    key = jax.random.fold_in(jax.random.PRNGKey(args.seed), 2)
    mlp_loss = charlm.train_mlp(train_data, eval_data, key=key, vocab_size=vocab)[2]["eval_loss"]
    numbers = {args.model: history["eval_loss"][-1], "mlp": mlp_loss[-1], "bigram": bigram}
    chars = np.asarray(eval_data[1]).size
    print(
        f"validation nats/char on {chars:,} characters: "
        + ", ".join(f"{name} {value:.4f}" for name, value in numbers.items())
    )
    text = json.dumps({"validation_nats_per_char": numbers, "characters": chars}, indent=2)
    checkpoint.atomic_write(out / "baselines.json", lambda f: f.write(text.encode()))


def load_run(run_dir: Path) -> tuple:
    """(model, params, config) of a character model's run folder; a UsageError for a folder
    that holds none, or whose files cannot be read as one."""
    config_path, saved = run_dir / "config.json", run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not config_path.is_file() or not saved.is_file():
        raise UsageError(f"{run_dir} holds no finished run (config.json and {saved.name})")
    with bad_input(f"{config_path}", (ValueError, OSError)):
        config = json.loads(config_path.read_text())
    if config.get("model") not in SEQUENCE_MODELS:
        raise UsageError(
            f"{run_dir} holds a {config.get('model') or 'MLP'} run on {config.get('dataset')}: "
            "jaxbp sample needs one trained with --model gpt or lstm"
        )
    # The network as the file gives it: a setting missing, or one gpt() or char_rnn() refuses.
    with bad_input(f"{config_path}", (KeyError, ValueError, TypeError)):
        model, context = sequence_model(config), int(config["context"])
    _, like = jax.eval_shape(lambda k: model.init(k, (context,)), jax.random.PRNGKey(0))
    with bad_input(errors=(ValueError, OSError)):  # not a checkpoint, or not this model's
        params = _saved_params(saved, like)
    return model, params, config


def _saved_params(path: Path, like):
    """The params in a training checkpoint (which also holds the optimizer's state)."""
    arrays = checkpoint.load(path)[0]
    pairs, treedef = jax.tree_util.tree_flatten_with_path({"params": like})
    leaves = []
    for key_path, template in pairs:
        name = jax.tree_util.keystr(key_path)
        array = arrays.get(name)
        if array is None or array.shape != template.shape:
            got = "missing" if array is None else f"shaped {array.shape}"
            raise ValueError(f"{path}: parameter {name} is {got}, the run's model wants "
                             f"{template.shape}")  # fmt: skip
        leaves.append(jax.numpy.asarray(array, template.dtype))
    return treedef.unflatten(leaves)["params"]


def sample(model, params, config: dict, args) -> list[str]:
    """`jaxbp sample`'s names: charlm.sample with the run's context and the command's options."""
    key = jax.random.PRNGKey(args.seed)
    return charlm.sample(
        model, params, key, context=config["context"], count=args.count,
        temperature=args.temperature, max_length=args.max_length,
    )  # fmt: skip
