"""Rule release_model: glue only. The work is cesynth.release.register_release, the release
gate (cesynth.release_gate: read_champion, gate_decision, apply_gate) and
cesynth.model_card.write_model_card."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import evaluation_tables, model_card, release, release_gate
from cesynth.checkpoint import read_checkpoint
from cesynth.io import write_json
from cesynth.jobs import Job, JobOutcome, run_job

experiment = snakemake.wildcards.experiment


def work():
    summary = snakemake.input.get("summary")
    scores = evaluation_tables.experiment_scores(summary, experiment) if summary else {}
    validation = release_gate.validation_brain_psnr(read_checkpoint(snakemake.input.checkpoint))
    if validation is not None:
        scores[release_gate.GATE_SCORE] = validation
    cascade = {target: path for target in release.CASCADE_TARGETS
               if (path := snakemake.input.get(f"cascade_{target}"))}
    name = snakemake.params.name
    record = release.register_release(snakemake.input.checkpoint, name, scores=scores,
                                      tags={"experiment": experiment,
                                            "checkpoint": snakemake.params.checkpoint},
                                      cascade=cascade)
    gates = release_gate.ReleaseGates.from_config(snakemake.params.gates)
    decision = release_gate.gate_decision(scores, release_gate.read_champion(name), gates)
    card = model_card.write_model_card(
        snakemake.output.card, release=record, experiment=experiment,
        checkpoint=snakemake.input.checkpoint, sets=snakemake.input.sets, summary=summary,
        gate=decision.to_dict(), evaluated_checkpoint=snakemake.params.checkpoint)
    model_card.log_model_card(card)
    release_gate.apply_gate(name, record["version"], decision)  # the alias moves last
    write_json(record | {"scores": scores, "gate": decision.to_dict(),
                         "champion": decision.passed}, snakemake.output.release)
    return JobOutcome(metrics={"registered_version": record["version"],
                               "gate_passed": int(decision.passed)})


run_job(Job.of(snakemake), work, live=True)  # registers the model of its run
