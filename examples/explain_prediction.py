"""Why did the model predict that? Proponents and opponents of a few test digits.

Trains a small CNN on scikit-learn's bundled 8x8 digits (no download) with a Lightning ``Trainer``,
fits ``ArnoldiInfluence`` at the trained weights and, for a few test digits z, finds the training
digits x with the largest influence

    I(x, z) = sum_i w_i <e_i, g_z> <e_i, g_x>      (w_i ~ 1 / lambda_i)

positive (proponents: removing x would raise the loss on z, they support the prediction) and
negative (opponents: removing x would lower it). Saves the result as an image grid, one row per
test digit: the digit, its proponents (green), its opponents (red).

    python examples/explain_prediction.py --out explain.png

The classes are importable, so the command line can explain the saved checkpoint too
(run from examples/, or with examples/ on PYTHONPATH):

    lightning-influence explain --ckpt CKPT --model explain_prediction.DigitsClassifier \\
        --data explain_prediction.DigitsData --loss cross_entropy --examples 0 1 2 --image why.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_influence import ArnoldiInfluence
from lightning_influence.losses import cross_entropy_loss


class DigitsData(pl.LightningDataModule):
    """scikit-learn's 1797 digits as ``[1, 8, 8]`` images in [0, 1]; a fixed train/test split."""

    def __init__(self, batch_size: int = 64, test_size: int = 297, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        digits = load_digits()
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
        y = torch.tensor(digits.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.hparams.seed))
        data = TensorDataset(x, y)
        self.test = Subset(data, order[: self.hparams.test_size].tolist())
        self.train = Subset(data, order[self.hparams.test_size :].tolist())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.hparams.batch_size)


class DigitsClassifier(pl.LightningModule):
    def __init__(self, channels: int = 8, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 2 * 2, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def save_grid(path: str, train, test, examples: list[int], top, predictions) -> None:
    """One row per test digit: the digit, its proponents (green), its opponents (red)."""
    from matplotlib.figure import Figure  # no pyplot: works without a display

    k = top.proponents.shape[1]
    cols = 1 + 2 * k
    figure = Figure(figsize=(1.2 * cols, 1.5 * len(examples)), dpi=100)
    for row, index in enumerate(examples):
        image, label = test[index]
        cells = [(image, f"test #{index}\ny={int(label)} pred={predictions[row]}", "black")]
        for kind, color, indices, scores in (
            ("+", "tab:green", top.proponents[row], top.proponent_scores[row]),
            ("-", "tab:red", top.opponents[row], top.opponent_scores[row]),
        ):
            for i, s in zip(indices.tolist(), scores.tolist(), strict=True):
                x, y = train[i]
                cells.append((x, f"{kind} #{i} y={int(y)}\n{s:.3g}", color))
        for col, (x, title, color) in enumerate(cells):
            ax = figure.add_subplot(len(examples), cols, row * cols + col + 1)
            ax.imshow(x[0].numpy(), cmap="gray_r", interpolation="nearest")
            ax.set_title(title, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("test digit | proponents (+) | opponents (-)   [#train index, label, I(x, z)]")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-iters", type=int, default=100, help="Arnoldi iterations n")
    parser.add_argument("--top-k", type=int, default=50, help="eigenpairs p kept")
    parser.add_argument("--hvp-samples", type=int, default=512, help="training digits in H")
    parser.add_argument("-k", type=int, default=5, help="proponents and opponents per digit")
    parser.add_argument("--examples", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="explain_prediction.png", help="the image grid")
    parser.add_argument("--logdir", default="lightning_logs", help="the Trainer's logs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data, model = DigitsData(seed=args.seed), DigitsClassifier()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        default_root_dir=args.logdir,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    trainer.fit(model, datamodule=data)

    # The Hessian at the trained weights, on a fixed sample of training digits; the scoring
    # loaders are unshuffled so that indices are positions in data.train.
    sample = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
    hvp_loader = DataLoader(Subset(data.train, sample[: args.hvp_samples].tolist()), batch_size=256)
    train_loader = DataLoader(data.train, batch_size=256)
    test_loader = DataLoader(Subset(data.test, args.examples), batch_size=256)
    engine = ArnoldiInfluence(
        model, cross_entropy_loss, n_iters=args.n_iters, top_k=args.top_k, seed=args.seed
    )
    engine.fit(hvp_loader)
    converged = int((engine.relative_residuals < 1e-2).sum())
    print(
        f"top eigenvalues {[round(v, 3) for v in engine.eigenvalues[:5].tolist()]}; "
        f"{converged} of {args.top_k} eigenpairs converged (relative residual < 1e-2)"
    )
    top = engine.top_influences(train_loader, test_loader, k=args.k)

    model.eval()
    with torch.no_grad():
        predictions = [
            int(model(x[None]).argmax()) for x, _ in (data.test[i] for i in args.examples)
        ]
    for row, index in enumerate(args.examples):
        label = int(data.test[index][1])
        pro = [(i, int(data.train[i][1])) for i in top.proponents[row].tolist()]
        con = [(i, int(data.train[i][1])) for i in top.opponents[row].tolist()]
        print(f"test #{index} (label {label}, predicted {predictions[row]})")
        print(f"  proponents (train index, label): {pro}")
        print(f"  opponents  (train index, label): {con}")
    save_grid(args.out, data.train, data.test, args.examples, top, predictions)
    print(f"image grid -> {args.out}")
    ckpt = Path(trainer.checkpoint_callback.best_model_path or "CKPT")
    print(
        "the same from the command line (in examples/):\n"
        f"  lightning-influence explain --ckpt {ckpt} --model explain_prediction.DigitsClassifier "
        "--data explain_prediction.DigitsData --loss cross_entropy "
        f"--examples {' '.join(map(str, args.examples))} --image why.png"
    )


if __name__ == "__main__":
    main()
