# Included by the makefile builds of `sam build` (BuildMethod: makefile): shared/Makefile (the layer),
# functions/batch_score and functions/promote. SAM runs each target in a scratch copy of the folder with
# ARTIFACTS_DIR set; this file is found next to the including Makefile's source, not the scratch copy.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)

# Lambda's python3.11 runtime is Amazon Linux 2: glibc 2.26. A wheel tagged manylinux_2_27 or newer
# (numpy >= 2.3, ai-edge-litert >= 2.0, ...) installs fine but fails to import there
# ("GLIBC_2.27 not found"), so only wheels built for glibc <= 2.26 are accepted. `make template-checks`
# also scans every built .so for the glibc symbol versions it needs.
LAMBDA_GLIBC_PLATFORMS = manylinux2014_x86_64 $(foreach minor,17 18 19 20 21 22 23 24 25 26,manylinux_2_$(minor)_x86_64)
PIP_TARGET_FLAGS = --quiet --no-compile --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
	--implementation cp $(foreach p,$(LAMBDA_GLIBC_PLATFORMS),--platform $(p))
RUNTIME_PROVIDED = boto3 botocore s3transfer

# pandas needs numpy, which the shared layer already carries (same pinned version): installing it again
# would cost ~60 MB of the 250 MB limit, so it is removed from the package, like the runtime's boto3.
# pandas' own test suite (pandas/tests, ~18 MB) is never imported at run time: removed too.
define build_pandas_function
	$(PYTHON) -m pip install $(PIP_TARGET_FLAGS) --target "$(ARTIFACTS_DIR)" -r requirements.txt
	cd "$(ARTIFACTS_DIR)" && rm -rf $(foreach p,numpy numpy.libs $(RUNTIME_PROVIDED),$(p) $(p)-*.dist-info) pandas/tests && \
		find . -name __pycache__ -prune -exec rm -rf {} +
	cp app.py "$(ARTIFACTS_DIR)/"
endef
