"""Pareto fronts on a hand-made example, and the sweep command end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from interventions.experiments.pareto import FRONTS, main, pareto_mask
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]


def test_pareto_mask_by_hand():
    points = [
        dict(effectiveness=-0.1, faithfulness=-2.0, minimality=50),  # most effective
        dict(effectiveness=-1.0, faithfulness=-0.1, minimality=5),  # most faithful, sparsest
        dict(effectiveness=-1.0, faithfulness=-2.5, minimality=60),  # dominated by both
        dict(effectiveness=-0.5, faithfulness=-1.0, minimality=5),  # trade-off point
        dict(effectiveness=-0.5, faithfulness=-1.0, minimality=7),  # ties on faith, worse minim.
    ]
    assert pareto_mask(points, FRONTS["faithfulness"]) == [True, True, False, True, True]
    assert pareto_mask(points, FRONTS["minimality"]) == [True, False, False, True, False]


def test_sweep_command(tiny_backbone_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "--config", str(ROOT / "configs" / "ioi" / "activscalar.yaml"),
        "--lambda_f", "0", "1", "--lambda_m", "0", "--margin", "1",
        "--out", str(out),
        "--",
        f"--model.backbone={tiny_backbone_dir}",
        "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--data.num_train=4", "--data.num_val=2", "--data.num_test=2", "--data.batch_size=4",
    ]  # fmt: skip
    result = main(argv)
    assert len(result["points"]) == 2 * 2 * 2  # 2 edits x 2 lambda_f x (train, test)
    assert {p["edit"] for p in result["points"]} == {"activscalar", "steervec"}
    saved = json.loads((out / "pareto.json").read_text())
    assert all("front_faithfulness" in p for p in saved["points"])
    for split_shares in saved["front_shares"]["minimality"].values():
        assert abs(sum(split_shares.values()) - 1.0) < 1e-9
    assert (out / "pareto.png").stat().st_size > 1000
    steer = json.loads(
        (
            resolve_run(out / "steervec_lf1_lm0_m1") / "intervention" / "intervention.json"
        ).read_text()
    )
    assert steer["extra"]["hparams"]["lr"] == 0.001  # the per-edit learning rate was applied
    # a second call reuses every finished run
    capsys.readouterr()
    main(argv)
    assert capsys.readouterr().out.count("done before, kept") == 4
