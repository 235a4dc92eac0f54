"""The Tailor pipeline: builds a primitive-tailored SFT set from the primitive libraries
(`tailor_jax.primitives`) in four resumable stages, and the baselines it is compared with.

Modules: `stages` (configs, stage results, stage directories and done markers, the question
pool), `pipeline` (analyse, discover, synthesize, `run_pipeline`, baselines, `warm_start`),
`curate` (the curate stage), `selection` (the diverse greedy selection), `metrics` (quality,
diversity and coverage of any SFT set), `teacher` (a local model for proposals and conditioned
traces), `baselines` (rule_based, four_star, redistill), `cli` (`tailor-jax tailor` and
`tailor-jax primitives`).
"""
