"""``make demo``'s main job runs end to end against a real server."""

from __future__ import annotations

from bismarck_controller import demo


def test_demo_trains_evaluates_and_predicts(dsn: str, conn, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BISMARCK_DSN", dsn)
    demo.run()
    out = capsys.readouterr().out
    assert "roc_auc" in out and "prediction" in out and "cancer_sql" in out
    versions = conn.execute("SELECT model_name, (metrics->>'converged')::boolean FROM "
                            "bismarck.models WHERE model_name IN ('cancer', 'cancer_sql') "
                            "ORDER BY 1").fetchall()
    assert versions == [("cancer", True), ("cancer_sql", True)]
    accuracy = conn.execute("SELECT value FROM bismarck.evaluate('cancer', "
                            "'demo_breast_cancer_test') WHERE metric = 'accuracy'").fetchone()
    assert accuracy[0] > 0.93
