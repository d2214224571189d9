# ordflow: PGXS build.  `make && make install`, then see README.md.

MODULE_big = ordflow
OBJS = \
	src/ordflow.o \
	src/shmem.o \
	src/control.o \
	src/order_message.o \
	src/order_fields.o \
	src/amqp_conn.o \
	src/amqp_frames.o \
	src/amqp_topology.o \
	src/amqp_url.o \
	src/supervisor.o \
	src/generator.o \
	src/relay.o \
	src/relay_broker.o \
	src/relay_outbox.o \
	src/consumer.o \
	src/batch_tuning.o \
	src/order_processing.o \
	src/partition_claims.o \
	src/partitions.o \
	src/message_batch.o \
	src/message_forward.o \
	src/message_reader.o \
	src/metrics.o \
	src/spi_util.o \
	src/worker_common.o

EXTENSION = ordflow
DATA = $(wildcard ordflow--*.sql)
PGFILEDESC = "ordflow - order pipeline with RabbitMQ transport"

PG_CPPFLAGS = -I$(srcdir)/src
# -Wextra warns of every unused parameter, PostgreSQL's own headers and
# callback signatures (check hooks, PG_FUNCTION_ARGS) included.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += -lrabbitmq

REGRESS = $(sort $(basename $(notdir $(wildcard $(srcdir)/sql/*.sql))))
REGRESS_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=./tmp_check
TAP_TESTS = 1
# isolation tests: the temp instance preloads ordflow for isolation_regression
ISOLATION = $(sort $(basename $(notdir $(wildcard $(srcdir)/specs/*.spec))))
ISOLATION_OPTS = --temp-config=$(srcdir)/test/isolation.conf --temp-instance=./tmp_check_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
