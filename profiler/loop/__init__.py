"""`specdec loop`: profile traffic -> corpus -> train a draft -> A/B -> promote only on a measured win.

    specdec loop --target PATH --served local|URL --standing-config JSON --profile access.jsonl \\
        --method eagle3|dflash|mtp|ngram|predicted_outputs --mode oneshot|controller [--start-phase N] \\
        [--state service-state.json]

Phases (each ends in a gate; a red gate stops the loop with its reason and nothing advances past it):

0. resolve + scaffold: prerequisites (target folder, method, standing config, A/B arms, trainer) are
   checked first and the loop fails closed naming what is missing; one evidence directory per
   experiment id.
1. profile: ``specdec profile`` over the access log (or ``--aa-shapes``).
2. corpus: ``specdec corpus`` from the profile and the redacted traffic.
3. train: ``specdec train --backend local`` (skipped for methods with nothing to train: mtp,
   ngram, predicted_outputs).
4. A/B: the standing config against the candidate, each served and measured in trials of the
   traffic's own prompts; ``specdec decide`` is the gate.
5. promote or keep, and publish a report (markdown + JSON + plot).

Every phase runs the project's own command (recorded with its output in the evidence directory),
so what the loop does is what an operator could run by hand. ``service-state.json``
(``specdec_service_v1``) is written atomically after every phase and locked against a second loop;
a loop killed mid-phase resumes at that phase.
"""
