# Two commands for a new user: `make demo` (set up .venv, run the main job on the bundled
# defaults) and `make test` (the test suite CI runs). Torch is pinned to the CPU wheel.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/sci-diffusion
OUT ?= out/demo

.PHONY: setup demo test lint test-slow benchmarks clean nnunet

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e '.[xtb]' || echo "tblite (GFN2-xTB) did not install: the demo's xTB step and the xTB tests will skip"
	touch $@

demo: setup
	$(CLI) demo --out $(OUT)/samplers
	$(CLI) sample molecules --num 100 --sampler dpmpp2m_sde --steps 50 --out $(OUT)/molecules.sdf --png $(OUT)/molecules.png
	$(CLI) evaluate molecules --samples $(OUT)/molecules.sdf --out $(OUT)/molecules_metrics.json --report $(OUT)/report.html
	$(CLI) sample molecules --num 50 --condition gap=6.5 --guidance 4 --guidance-interval 0.1,0.5 --steps 50 --out $(OUT)/gap_6.5eV.sdf \
		--png $(OUT)/gap_6.5eV.png
	# physics in the loop: two gap targets, 16 drawn for each, the 4 closest by relaxed GFN2-xTB gap kept; the printed
	# table shows each kept candidate's target, the classifier's gap and xTB's (at the written geometry and relaxed)
	if $(PY) -c "import tblite.interface" 2>/dev/null; then \
		for gap in 5.0 8.0; do $(CLI) sample molecules --num 4 --condition gap=$$gap --oversample 4 --xtb --steps 50 \
			--out $(OUT)/gap_$${gap}eV_xtb.sdf || exit 1; done; \
	else echo "tblite is not installed (pip install '.[xtb]'): the xTB candidates step is skipped"; fi
	$(CLI) phantom --subjects 1 --spacing 2 --seed 99 --out $(OUT)/phantom
	$(CLI) translate --mr $(OUT)/phantom/1BA001/mr.nii.gz --mask $(OUT)/phantom/1BA001/mask.nii.gz \
		--ct $(OUT)/phantom/1BA001/ct.nii.gz --samples 4 --out $(OUT)/sct/1BA001/sct.nii.gz \
		--uncertainty $(OUT)/sct/1BA001/sct_std.nii.gz --png $(OUT)/sct_panel.png
	$(CLI) evaluate mri2ct --pred $(OUT)/sct --ref $(OUT)/phantom --out $(OUT)/mri2ct_metrics.json \
		--png $(OUT)/mri2ct_reliability.png --report $(OUT)/mri2ct_report.html
	rm -rf $(OUT)/synthetic  # synthesize never overwrites a data set
	$(CLI) synthesize medical --num 2 --out $(OUT)/synthetic --format nnunet
	$(CLI) sample molecules --smiles "CC(=O)NC" --num 5 --out $(OUT)/conformers.sdf

test: setup
	$(PY) -m pytest -q

# nnU-Net v2, only for the test that runs its dataset-integrity check on `synthesize medical --format nnunet`
# (it skips without). A plain `pip install nnunetv2` replaces the CPU torch with a CUDA build, so this
# installs nnunetv2 and the modules its check imports without their dependencies (about 310 MB, mostly SimpleITK).
nnunet: setup
	$(PY) -m pip install --quiet --no-deps nnunetv2==2.8.1 batchgenerators==0.25.5 acvl_utils==0.2.6 SimpleITK==2.5.7 \
		numexpr==2.14.2 ndindex==1.10.1 msgpack==1.2.4
	$(PY) -m pip install --quiet blosc2==4.14.1

lint: setup
	$(VENV)/bin/ruff check .

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(OUT) runs
