#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_prefetch.h>
#include "shim.h"

uint16_t pp_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t pp_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_burst(port, queue, pkts, n); }
struct rte_mbuf *pp_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int pp_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{ return rte_pktmbuf_alloc_bulk(mp, mbufs, count); }
void pp_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void pp_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count) { rte_pktmbuf_free_bulk(mbufs, count); }
char *pp_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *pp_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
char *pp_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
int pp_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
void *pp_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }
uint16_t pp_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }
void pp_mbuf_refcnt_set(struct rte_mbuf *m, uint16_t v) { rte_mbuf_refcnt_set(m, v); }
void pp_prefetch0(const void *p) { rte_prefetch0(p); }
unsigned pp_lcore_id(void) { return rte_lcore_id(); }
int pp_errno(void) { return rte_errno; }
uint64_t pp_rdtsc(void) { return rte_rdtsc(); }
uint64_t pp_tsc_hz(void) { return rte_get_tsc_hz(); }
unsigned pp_mempool_avail_count(const struct rte_mempool *mp) { return rte_mempool_avail_count(mp); }

int pp_netns_enter(const char *path)
{
	int saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (saved < 0)
		return -errno;
	int target = open(path, O_RDONLY | O_CLOEXEC);
	if (target < 0) {
		int e = errno;
		close(saved);
		return -e;
	}
	int rc = setns(target, CLONE_NEWNET);
	int e = errno;
	close(target);
	if (rc < 0) {
		close(saved);
		return -e;
	}
	return saved;
}

int pp_netns_leave(int saved_fd)
{
	int rc = setns(saved_fd, CLONE_NEWNET);
	int e = errno;
	close(saved_fd);
	return rc < 0 ? -e : 0;
}
