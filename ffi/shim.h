/* The static-inline DPDK functions Rust cannot call directly, exported as real
 * symbols. Keep each one a plain forwarder: policy belongs in Rust. */
#ifndef PODPATH_SHIM_H
#define PODPATH_SHIM_H
#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>

uint16_t pp_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t pp_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *pp_pktmbuf_alloc(struct rte_mempool *mp);
int pp_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void pp_pktmbuf_free(struct rte_mbuf *m);
void pp_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
char *pp_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *pp_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *pp_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int pp_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void *pp_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t pp_mbuf_refcnt_read(const struct rte_mbuf *m);
void pp_mbuf_refcnt_set(struct rte_mbuf *m, uint16_t v);
void pp_prefetch0(const void *p);
unsigned pp_lcore_id(void);
int pp_errno(void);
uint64_t pp_rdtsc(void);
uint64_t pp_tsc_hz(void);
unsigned pp_mempool_avail_count(const struct rte_mempool *mp);

/* Run the next calls in another network namespace: enter returns a descriptor of the
 * thread's old namespace (or -errno), leave restores it. Only the calling thread moves.
 * DPDK's tap and af_packet PMDs create their kernel objects in the caller's namespace,
 * which is how a pod's port is made inside the pod. */
int pp_netns_enter(const char *path);
int pp_netns_leave(int saved_fd);
#endif
