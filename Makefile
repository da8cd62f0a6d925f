# Builds build/ngx_http_invoices_module.so against the installed nginx
# (Debian's nginx-dev ships its configured source in /usr/share/nginx/src).
#
#   make            build the module (incremental)
#   make test       install what is missing, start PostgreSQL and Redis,
#                   run every test with prove (scripts/test)
#   make test SANITIZE=1
#                   the same with the module built with ASan and UBSan
#                   (in build-asan/), loaded into Debian's nginx
#   make fuzz       build the libFuzzer harnesses of t/fuzz/ (clang) and
#                   run each for FUZZ_TIME seconds (default 60)
#   make check-all  test, SANITIZE=1 test, valgrind test, fuzz
#   make [test] NGINX_SRC=`scripts/nginx-src trixie` [TESTS="t/list.t ..."]
#                   the same against another Debian suite's nginx
#   make [test] STATIC=1 NGINX_SRC=`scripts/nginx-src bookworm`
#                   the module built into nginx (--add-module), no .so
#   make deb        build/deb/libnginx-mod-http-invoices_<version>_<arch>.deb
#                   (scripts/deb: dh with dh_nginx, Debian's nginx-dev)
#   make test-deb   build it, install it with dpkg -i, check it with
#                   Debian's stock nginx.conf and a running nginx
#                   (t/package.t), purge it.  Changes the system: for CI
#                   and throwaway machines.
#   make clean      remove build/ and build-asan/

SHELL      := /bin/bash
NGINX_SRC  ?= /usr/share/nginx/src
FUZZ_TIME  ?= 60

# Another nginx: NGINX_SRC=`scripts/nginx-src trixie`, a complete source
# tree with Debian's conf_flags.  The module and the nginx binary the tests
# run are then both built from it, in build-<suite>/; Debian 12's
# nginx-dev (the default) has no .c files, and its tests run
# /usr/sbin/nginx.
NGINX_FULL := $(wildcard $(NGINX_SRC)/src/core/nginx.c)
ifeq ($(NGINX_SRC),/usr/share/nginx/src)
BUILD_NAME := build
else
BUILD_NAME := build-$(notdir $(patsubst %/tree,%,$(abspath $(NGINX_SRC))))
endif

# Our files are held to -Wall -Wextra -Werror (nginx adds -Wall -Werror to
# its own; -Wextra is ours).  SANITIZE=1 builds with ASan and UBSan, in a
# build directory of its own, so switching never mixes objects.
EXTRA_CFLAGS := -Wall -Wextra -Werror -Wno-unused-parameter
ifeq ($(STATIC),1)
BUILD_NAME := $(BUILD_NAME)-static
endif
ifeq ($(SANITIZE),1)
BUILD      := $(patsubst build%,build-asan%,$(BUILD_NAME))
EXTRA_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer
EXTRA_LDFLAGS += -fsanitize=address,undefined
else
BUILD      := $(BUILD_NAME)
endif

NGX_BUILD  := $(BUILD)/nginx
MODULE     := $(BUILD)/ngx_http_invoices_module.so
ADD_MODULE := --add-dynamic-module
ifeq ($(STATIC),1)
MODULE     := $(BUILD)/nginx-static
ADD_MODULE := --add-module
endif
NGINX_BIN  := $(if $(NGINX_FULL),$(CURDIR)/$(NGX_BUILD)/objs/nginx,/usr/sbin/nginx)
SRCS       := $(wildcard ngx_http_invoices_module/*.c ngx_http_invoices_module/*.h)

# libFuzzer needs clang; the harnesses link parse.c, not nginx (see
# t/fuzz/ngx_stubs.c), against the headers of the configured build/nginx.
FUZZ_CC      ?= clang
FUZZ_TARGETS := list_args create signature form action
FUZZ_DIR     := build/fuzz
FUZZ_CFLAGS  := -g -O1 -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=all -fno-omit-frame-pointer \
                -Wall -Wextra -Werror -Wno-unused-parameter \
                -I $(NGINX_SRC)/src/core -I $(NGINX_SRC)/src/event \
                -I $(NGINX_SRC)/src/event/modules -I $(NGINX_SRC)/src/os/unix \
                -I build/nginx/objs -I ngx_http_invoices_module
FUZZ_SRCS    := ngx_http_invoices_module/ngx_http_invoices_parse.c \
                ngx_http_invoices_module/ngx_http_invoices_parse.h \
                t/fuzz/ngx_stubs.c

.PHONY: all test deb test-deb fuzz fuzz-build check-all clean

all: $(MODULE)

# configure once; objs/Makefile then rebuilds only what changed.
$(NGX_BUILD)/objs/Makefile: config $(NGINX_SRC)/conf_flags
	rm -rf $(NGX_BUILD) && mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --with-cc-opt="-g -O2 -fstack-protector-strong -Wformat \
	        -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2 $(EXTRA_CFLAGS)" \
	    --with-ld-opt="-Wl,-z,relro -Wl,-z,now -fPIC $(EXTRA_LDFLAGS)" \
	    $(ADD_MODULE)=$(CURDIR) > configure.log 2>&1 \
	    || { tail -30 configure.log; exit 1; }

ifeq ($(STATIC),1)
ifeq ($(NGINX_FULL),)
$(MODULE):
	@echo "make STATIC=1: $(NGINX_SRC) has no nginx source to build nginx from;" \
	    "try NGINX_SRC=\`scripts/nginx-src bookworm\`" >&2
	@exit 1
else
$(MODULE): $(NGX_BUILD)/objs/Makefile $(SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile
	@# the tests' nginx; the stamp says it is built
	touch $@
endif
else
$(MODULE): $(NGX_BUILD)/objs/Makefile $(SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile $(if $(NGINX_FULL),,modules)
	@# a new inode, never rewritten in place: a running nginx has it mapped
	cp $(NGX_BUILD)/objs/ngx_http_invoices_module.so $@.tmp
	mv -f $@.tmp $@
endif

# installs first: on a fresh machine the build itself needs nginx-dev
# TESTS: some test files instead of all (e.g. TESTS="t/list.t t/create.t")
test:
ifeq ($(NGINX_FULL)$(filter build,$(BUILD_NAME)),)
	@echo "make test: $(NGINX_SRC) has no nginx source to build the tests' nginx from" \
	    "($$(cat $(NGINX_SRC)/debian-version 2>/dev/null)); make builds the module only" >&2
	@exit 1
endif
	scripts/deps $(if $(NGINX_FULL),nginx-src)
	$(MAKE) all
	INVOICES_MODULE=$(if $(filter 1,$(STATIC)),static,$(CURDIR)/$(MODULE)) \
	    INVOICES_NGINX=$(NGINX_BIN) \
	    $(if $(filter 1,$(SANITIZE)),INVOICES_TEST_SANITIZE=1) \
	    scripts/test $(TESTS)

deb:
	scripts/deps deb
	scripts/deb

test-deb:
	scripts/deps deb
	deb=$$(scripts/deb) && INVOICES_TEST_DEB=$$deb scripts/test t/package.t

$(FUZZ_DIR)/fuzz_%: t/fuzz/fuzz_%.c $(FUZZ_SRCS) build/nginx/objs/Makefile
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< \
	    ngx_http_invoices_module/ngx_http_invoices_parse.c \
	    t/fuzz/ngx_stubs.c -ljansson -lcrypto

ifneq ($(BUILD),build)
build/nginx/objs/Makefile:
	$(MAKE) build/nginx/objs/Makefile SANITIZE=
endif

fuzz-build:
	scripts/deps fuzz
	$(MAKE) $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

# New inputs go to build/fuzz/corpus/ (t/fuzz/corpus/ is the committed
# seed); a crash, leak or UB report stops the target and fails the run,
# leaving its input in build/fuzz/.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	    dict=; [[ -f t/fuzz/$$t.dict ]] && dict=-dict=t/fuzz/$$t.dict; \
	    echo "fuzz $$t: $(FUZZ_TIME) s"; \
	    $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_TIME) \
	        -print_final_stats=1 $$dict \
	        -artifact_prefix=$(FUZZ_DIR)/$$t- \
	        $(FUZZ_DIR)/corpus/$$t t/fuzz/corpus/$$t \
	        > $(FUZZ_DIR)/$$t.log 2>&1 \
	    || { tail -60 $(FUZZ_DIR)/$$t.log; \
	         echo "fuzz $$t: FAILED, see $(FUZZ_DIR)/$$t.log"; exit 1; }; \
	    grep -E '^stat::number_of_executed_units|DONE' $(FUZZ_DIR)/$$t.log \
	        | sed "s/^/fuzz $$t: /"; \
	done

check-all:
	$(MAKE) test
	$(MAKE) test SANITIZE=1
	$(MAKE) all
	TEST_NGINX_USE_VALGRIND=1 scripts/test
	$(MAKE) fuzz

clean:
	rm -rf build build-*
