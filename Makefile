# Builds build/ngx_http_invoices_module.so against the installed nginx
# (Debian's nginx-dev ships its configured source in /usr/share/nginx/src).
#
#   make            build the module (incremental)
#   make test       install what is missing, start PostgreSQL and Redis,
#                   run every test with prove (scripts/test)
#   make clean      remove build/

SHELL      := /bin/bash
NGINX_SRC  ?= /usr/share/nginx/src
BUILD      := build
NGX_BUILD  := $(BUILD)/nginx
MODULE     := $(BUILD)/ngx_http_invoices_module.so
SRCS       := $(wildcard ngx_http_invoices_module/*.c ngx_http_invoices_module/*.h)

# Our files are held to -Wall -Wextra -Werror (nginx adds -Wall -Werror to
# its own; -Wextra is ours).  SANITIZE=1 builds with ASan and UBSan.
EXTRA_CFLAGS := -Wall -Wextra -Werror -Wno-unused-parameter
ifeq ($(SANITIZE),1)
EXTRA_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer
EXTRA_LDFLAGS += -fsanitize=address,undefined
endif

.PHONY: all test clean

all: $(MODULE)

# configure once; objs/Makefile then rebuilds only what changed.
$(NGX_BUILD)/objs/Makefile: config $(NGINX_SRC)/conf_flags
	rm -rf $(NGX_BUILD) && mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --with-cc-opt="-g -O2 -fstack-protector-strong -Wformat \
	        -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2 $(EXTRA_CFLAGS)" \
	    --with-ld-opt="-Wl,-z,relro -Wl,-z,now -fPIC $(EXTRA_LDFLAGS)" \
	    --add-dynamic-module=$(CURDIR) > configure.log 2>&1 \
	    || { tail -30 configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/objs/Makefile $(SRCS)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	@# a new inode, never rewritten in place: a running nginx has it mapped
	cp $(NGX_BUILD)/objs/ngx_http_invoices_module.so $@.tmp
	mv -f $@.tmp $@

# installs first: on a fresh machine the build itself needs nginx-dev
test:
	scripts/deps
	$(MAKE) all
	scripts/test

clean:
	rm -rf $(BUILD)
