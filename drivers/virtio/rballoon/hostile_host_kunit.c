// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit: the Rust virtio balloon driver (rballoon) against a hostile host.
 *
 * QEMU answers every request at once and never sends a used length or a command id a guest
 * did not expect, so the harness cannot show what the driver does when the host misbehaves.
 * This suite plays the host itself: a software virtio balloon device whose queues are the
 * kernel's own split virtqueues on the driver side (vring_create_virtqueue()) and are read on
 * the device side with vringh, as vhost reads a guest's, from a work item. Each case makes the
 * host misbehave in one way and checks that the driver ends with a bounded wait, a clear
 * message in the log and no page lost: whatever the balloon holds is accounted for while the
 * device lives, and every page is back with the page allocator once it is gone.
 */

#include <kunit/device.h>
#include <kunit/test.h>
#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/jiffies.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/page_reporting.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_balloon.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/vringh.h>
#include <linux/workqueue.h>

/* page_reporting_order: the order page reporting settled on, set by its first registration. */
#include "../../../mm/page_reporting.h"

/* The queues in the driver's order (the C enum virtio_balloon_vq). */
enum th_vq_index { TH_INFLATE, TH_DEFLATE, TH_STATS, TH_FREE_PAGE, TH_REPORTING, TH_NUM_VQS };

#define TH_VQ_SIZE 128

/* How long the driver waits for a request before it calls the host silent (HOST_TIMEOUT_MS). */
#define TH_DRIVER_TIMEOUT_MS 30000

/* The driver's hinting window (hint::LEND_WINDOW_BYTES): blocks queued, not given back. */
#define TH_LEND_WINDOW max(1UL, (32UL << 20) >> (PAGE_SHIFT + MAX_PAGE_ORDER))

/* How long a hinting round waits for a host that holds the whole window (LEND_WAIT). */
#define TH_LEND_WAIT_MS 2000

/* Balloon PFNs in a full request (VIRTIO_BALLOON_ARRAY_PFNS_MAX in the C driver). */
#define TH_PFNS_PER_REQUEST 256

/* The balloon PFNs the host records, as it decoded them (a 4 MiB inflate of 4 KiB pages). */
#define TH_PFNS_MAX 1024

/* How long a host that is stopped takes to come back: more than the driver's timeout. */
#define TH_STALL_MS (TH_DRIVER_TIMEOUT_MS + 5000)

/* Command ids the guest's hinting reacts to, besides new ids. */
#define TH_CMD_ID_STOP 0
#define TH_CMD_ID_DONE 1

struct th_vq {
	struct virtqueue *vq;
	struct vringh vrh;
	/* Buffers the host keeps instead of using them (until the device is reset) ... */
	unsigned int nheld;
	/* ... and their heads, for a host that uses them late (th_give_back()). */
	u16 held[TH_VQ_SIZE];
};

/* The device and the host behind it. */
struct test_host {
	struct virtio_device vdev;
	struct work_struct work;
	/* Protects cfg, status, generation and the what-was-seen counters below. */
	spinlock_t lock;
	struct virtio_balloon_config cfg;
	u32 generation;
	u8 status;
	u64 features;
	struct th_vq vqs[TH_NUM_VQS];

	/* How the host misbehaves. */
	bool keep[TH_NUM_VQS];	/* never use the buffers of this queue */
	bool give_back[TH_NUM_VQS]; /* use those kept after all, on the next run of the work */
	bool bad_head[TH_NUM_VQS]; /* use them under an id the driver never queued */
	bool keep_hint_blocks;	/* use command ids on the free page queue, keep the blocks */
	bool claim_reset;	/* report status 0 (reset) whatever the driver set */
	u32 used_len;		/* the length every used buffer is returned with */
	unsigned int stats_requests; /* ask for statistics again as soon as answered, this often */

	/* What the host saw. */
	unsigned long pfns_inflated, pfns_deflated;
	unsigned int pfns_per_request_max[2];	/* the most PFNs in one inflate, deflate request */
	unsigned long inflated_pfn;	/* the first PFN of the last inflate request */
	u32 pfns[TH_PFNS_MAX];		/* the first TH_PFNS_MAX balloon PFNs inflated */
	unsigned int npfns;
	struct { u16 tag; u64 val; } stats[VIRTIO_BALLOON_S_NR]; /* the last statistics sent */
	unsigned int nstats;
	unsigned long stats_answers;
	unsigned long reported_bytes;
	unsigned int stats_queued_max;	/* statistics buffers with the host at once */
	unsigned int hint_blocks_held, hint_blocks_held_max;
	unsigned int requests[TH_NUM_VQS];	/* buffers the host took off each queue */
	unsigned int notifies[TH_NUM_VQS];	/* notifications (kicks) per queue */
	unsigned int queued_max[TH_NUM_VQS];	/* buffers with the host at a notification */
	unsigned int resets;
	bool reset_unbroken;	/* a reset came while a queue was not marked broken */
	u32 cmd_ids[16];
	unsigned int ncmd_ids;
};

static struct test_host *to_th(struct virtio_device *vdev)
{
	return container_of(vdev, struct test_host, vdev);
}

/* ---- The device side: what the host does with each buffer. ---- */

/* The bytes of a buffer the driver handed over: balloon PFNs are guest-physical addresses. */
static void *th_buf(const struct kvec *iov)
{
	return phys_to_virt((phys_addr_t)(unsigned long)iov->iov_base);
}

/* Returns true if the host keeps the buffer instead of using it. */
static bool th_serve(struct test_host *th, int i, struct vringh_kiov *riov,
		     struct vringh_kiov *wiov)
{
	size_t out = vringh_kiov_length(riov);
	bool keep = READ_ONCE(th->keep[i]);

	spin_lock_irq(&th->lock);
	switch (i) {
	case TH_INFLATE: {
		/* __virtio32: little-endian, or the guest's byte order for a legacy device. */
		__virtio32 *pfns = th_buf(&riov->iov[0]);
		size_t k, n = riov->iov[0].iov_len / sizeof(*pfns);

		th->pfns_inflated += out / sizeof(*pfns);
		th->pfns_per_request_max[TH_INFLATE] =
			max_t(size_t, th->pfns_per_request_max[TH_INFLATE], out / sizeof(*pfns));
		if (n)
			th->inflated_pfn = virtio32_to_cpu(&th->vdev, pfns[0]);
		for (k = 0; k < n && th->npfns < TH_PFNS_MAX; k++)
			th->pfns[th->npfns++] = virtio32_to_cpu(&th->vdev, pfns[k]);
		break;
	}
	case TH_DEFLATE:
		th->pfns_deflated += out / sizeof(__virtio32);
		th->pfns_per_request_max[TH_DEFLATE] =
			max_t(size_t, th->pfns_per_request_max[TH_DEFLATE],
			      out / sizeof(__virtio32));
		break;
	case TH_STATS: {
		struct virtio_balloon_stat *st = th_buf(&riov->iov[0]);
		size_t k, n = riov->iov[0].iov_len / sizeof(*st);

		th->nstats = min_t(size_t, n, VIRTIO_BALLOON_S_NR);
		for (k = 0; k < th->nstats; k++) {
			th->stats[k].tag = virtio16_to_cpu(&th->vdev, st[k].tag);
			th->stats[k].val = virtio64_to_cpu(&th->vdev, st[k].val);
		}
		th->stats_answers++;
		/* Ask again at once while there are requests left; else keep it, as QEMU does. */
		if (th->stats_requests)
			th->stats_requests--;
		else
			keep = true;
		break;
	}
	case TH_FREE_PAGE:
		if (out == sizeof(__virtio32) && riov->used == 1) {
			__virtio32 *id = th_buf(&riov->iov[0]);

			if (th->ncmd_ids < ARRAY_SIZE(th->cmd_ids))
				th->cmd_ids[th->ncmd_ids++] = virtio32_to_cpu(&th->vdev, *id);
		} else if (vringh_kiov_length(wiov) && th->keep_hint_blocks) {
			th->hint_blocks_held++;
			th->hint_blocks_held_max = max(th->hint_blocks_held,
						       th->hint_blocks_held_max);
			keep = true;
		}
		break;
	case TH_REPORTING:
		th->reported_bytes += vringh_kiov_length(wiov);
		break;
	}
	spin_unlock_irq(&th->lock);
	return keep;
}

/* Tells the driver that buffers were used, from interrupt-like context as a transport does. */
static void th_interrupt(struct th_vq *q)
{
	unsigned long flags;

	local_irq_save(flags);
	vring_interrupt(0, q->vq);
	local_irq_restore(flags);
}

/*
 * Statistics buffers the driver has with the host now: those the host keeps, the one just
 * taken, and those still waiting in the available ring.
 */
static void th_count_stats_queued(struct test_host *th, struct th_vq *q)
{
	u16 avail = le16_to_cpu((__force __le16)READ_ONCE(q->vrh.vring.avail->idx));
	unsigned int queued = q->nheld + 1 + (u16)(avail - q->vrh.last_avail_idx);

	spin_lock_irq(&th->lock);
	th->stats_queued_max = max(th->stats_queued_max, queued);
	spin_unlock_irq(&th->lock);
}

static void th_work(struct work_struct *work)
{
	struct test_host *th = container_of(work, struct test_host, work);
	struct kvec rk[4], wk[4];
	int i;

	/* Hostile, but not out of spec: no buffer is used before the driver is ready. */
	if (!(READ_ONCE(th->status) & VIRTIO_CONFIG_S_DRIVER_OK))
		return;
	for (i = 0; i < TH_NUM_VQS; i++) {
		struct th_vq *q = &th->vqs[i];
		bool used = false;

		if (!q->vq)
			continue;
		if (READ_ONCE(th->give_back[i])) {
			WRITE_ONCE(th->give_back[i], false);
			while (q->nheld) {
				vringh_complete_kern(&q->vrh, q->held[--q->nheld], 0);
				used = true;
			}
		}
		for (;;) {
			struct vringh_kiov riov, wiov;
			u16 head;
			int got;

			vringh_kiov_init(&riov, rk, ARRAY_SIZE(rk));
			vringh_kiov_init(&wiov, wk, ARRAY_SIZE(wk));
			got = vringh_getdesc_kern(&q->vrh, &riov, &wiov, &head, GFP_KERNEL);
			if (got > 0) {
				WRITE_ONCE(th->requests[i], th->requests[i] + 1);
				if (i == TH_STATS)
					th_count_stats_queued(th, q);
				if (th_serve(th, i, &riov, &wiov)) {
					q->held[q->nheld++] = head;
				} else if (th->bad_head[i]) {
					/* Out of range: no descriptor has this id. */
					vringh_complete_kern(&q->vrh, TH_VQ_SIZE + 1, 0);
					used = true;
				} else {
					vringh_complete_kern(&q->vrh, head, th->used_len);
					used = true;
				}
			}
			vringh_kiov_cleanup(&riov);
			vringh_kiov_cleanup(&wiov);
			if (got <= 0)
				break;
		}
		if (used)
			th_interrupt(q);
	}
}

/* ---- The transport: virtio_config_ops on top of the above. ---- */

static void th_get(struct virtio_device *vdev, unsigned int offset, void *buf, unsigned int len)
{
	struct test_host *th = to_th(vdev);

	if (WARN_ON(offset + len > sizeof(th->cfg)))
		return;
	spin_lock_irq(&th->lock);
	memcpy(buf, (u8 *)&th->cfg + offset, len);
	spin_unlock_irq(&th->lock);
}

static void th_set(struct virtio_device *vdev, unsigned int offset, const void *buf,
		   unsigned int len)
{
	struct test_host *th = to_th(vdev);

	if (WARN_ON(offset + len > sizeof(th->cfg)))
		return;
	spin_lock_irq(&th->lock);
	memcpy((u8 *)&th->cfg + offset, buf, len);
	spin_unlock_irq(&th->lock);
}

static u32 th_generation(struct virtio_device *vdev)
{
	return READ_ONCE(to_th(vdev)->generation);
}

static u8 th_get_status(struct virtio_device *vdev)
{
	struct test_host *th = to_th(vdev);

	return READ_ONCE(th->claim_reset) ? 0 : READ_ONCE(th->status);
}

static void th_set_status(struct virtio_device *vdev, u8 status)
{
	struct test_host *th = to_th(vdev);

	WRITE_ONCE(th->status, status);
	/* Buffers queued while the driver was probing are used from now on. */
	if (status & VIRTIO_CONFIG_S_DRIVER_OK)
		schedule_work(&th->work);
}

static void th_reset(struct virtio_device *vdev)
{
	struct test_host *th = to_th(vdev);
	int i;

	/* The driver is to break the queues first, so that nothing kicks a device being reset. */
	for (i = 0; i < TH_NUM_VQS; i++)
		if (th->vqs[i].vq && !virtqueue_is_broken(th->vqs[i].vq))
			WRITE_ONCE(th->reset_unbroken, true);
	WRITE_ONCE(th->resets, th->resets + 1);
	/* A reset device uses no buffer any more, and forgets those it kept. */
	cancel_work_sync(&th->work);
	WRITE_ONCE(th->status, 0);
}

static bool th_notify(struct virtqueue *vq)
{
	struct test_host *th = to_th(vq->vdev);
	/* Without EVENT_IDX and with notifications on, every kick of the driver comes here. */
	unsigned int queued = virtqueue_get_vring_size(vq) - vq->num_free;
	int i;

	spin_lock_irq(&th->lock);
	for (i = 0; i < TH_NUM_VQS; i++) {
		if (th->vqs[i].vq == vq) {
			th->notifies[i]++;
			th->queued_max[i] = max(th->queued_max[i], queued);
		}
	}
	spin_unlock_irq(&th->lock);
	schedule_work(&th->work);
	return true;
}

static void th_del_vqs(struct virtio_device *vdev)
{
	struct test_host *th = to_th(vdev);
	int i;

	cancel_work_sync(&th->work);
	for (i = 0; i < TH_NUM_VQS; i++) {
		if (th->vqs[i].vq)
			vring_del_virtqueue(th->vqs[i].vq);
		th->vqs[i].vq = NULL;
		th->vqs[i].nheld = 0;
	}
}

/*
 * What the device's queue @index is for, numbered as QEMU and crosvm number them: by the features
 * the device offers, not by those negotiated: inflate, deflate, then stats, free page hinting and
 * reporting, each only if offered. -1 past the last queue.
 */
static int th_role(struct test_host *th, unsigned int index)
{
	static const struct {
		int role;
		int feature;	/* offered for the queue to exist; -1: always there */
	} layout[] = {
		{ TH_INFLATE, -1 },
		{ TH_DEFLATE, -1 },
		{ TH_STATS, VIRTIO_BALLOON_F_STATS_VQ },
		{ TH_FREE_PAGE, VIRTIO_BALLOON_F_FREE_PAGE_HINT },
		{ TH_REPORTING, VIRTIO_BALLOON_F_REPORTING },
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(layout); i++) {
		if (layout[i].feature >= 0 && !(th->features & BIT_ULL(layout[i].feature)))
			continue;
		if (!index--)
			return layout[i].role;
	}
	return -1;
}

/*
 * The transport numbers the driver's named queues 0, 1, 2, ... in its order (absent ones have no
 * name), as virtio-pci and virtio-mmio do; the device serves each as th_role() says, whatever the
 * driver meant it for.
 */
static int th_find_vqs(struct virtio_device *vdev, unsigned int nvqs, struct virtqueue *vqs[],
		       struct virtqueue_info vqs_info[], struct irq_affinity *desc)
{
	struct test_host *th = to_th(vdev);
	unsigned int i, index = 0;

	if (nvqs > TH_NUM_VQS)
		return -EINVAL;
	for (i = 0; i < nvqs; i++) {
		const struct vring *vring;
		struct th_vq *q;
		int role, err;

		vqs[i] = NULL;
		if (!vqs_info[i].name)
			continue;
		role = th_role(th, index);
		if (role < 0) {
			/* No such queue: a PCI device reports size 0 for it. */
			th_del_vqs(vdev);
			return -ENOENT;
		}
		q = &th->vqs[role];
		q->vq = vring_create_virtqueue(index++, TH_VQ_SIZE, SMP_CACHE_BYTES, vdev, true,
					       false, vqs_info[i].ctx, th_notify,
					       vqs_info[i].callback, vqs_info[i].name);
		if (!q->vq) {
			th_del_vqs(vdev);
			return -ENOMEM;
		}
		vring = virtqueue_get_vring(q->vq);
		err = vringh_init_kern(&q->vrh, vdev->features, vring->num, true, vring->desc,
				       vring->avail, vring->used);
		if (err) {
			th_del_vqs(vdev);
			return err;
		}
		q->nheld = 0;
		vqs[i] = q->vq;
	}
	return 0;
}

static u64 th_get_features(struct virtio_device *vdev)
{
	return to_th(vdev)->features;
}

static int th_finalize_features(struct virtio_device *vdev)
{
	vring_transport_features(vdev);
	return 0;
}

static const char *th_bus_name(struct virtio_device *vdev)
{
	return "hostile-host";
}

static const struct virtio_config_ops th_config_ops = {
	.get = th_get,
	.set = th_set,
	.generation = th_generation,
	.get_status = th_get_status,
	.set_status = th_set_status,
	.reset = th_reset,
	.find_vqs = th_find_vqs,
	.del_vqs = th_del_vqs,
	.get_features = th_get_features,
	.finalize_features = th_finalize_features,
	.bus_name = th_bus_name,
};

static void th_release(struct device *dev)
{
	kfree(container_of(dev, struct test_host, vdev.dev));
}

/* ---- Test helpers. ---- */

/*
 * The balloon's size in 4 KiB balloon pages, as `actual` and the requests count it: exact, with
 * the per-cpu deltas an SMP kernel has not folded into the node counters yet (thousands of pages
 * go in and out here, and global_node_page_state() lags by up to a batch per CPU).
 */
static unsigned long balloon_pages(void)
{
	struct pglist_data *pgdat;
	long pages = 0;

	for_each_online_pgdat(pgdat) {
#ifdef CONFIG_SMP
		int cpu;

		for_each_online_cpu(cpu)
			pages += per_cpu_ptr(pgdat->per_cpu_nodestats,
					     cpu)->vm_node_stat_diff[NR_BALLOON_PAGES];
#endif
		pages += atomic_long_read(&pgdat->vm_stat[NR_BALLOON_PAGES]);
	}
	return max(pages, 0L) * (PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT);
}

#define TH_HINT_BLOCK_MIB ((PAGE_SIZE << MAX_PAGE_ORDER) >> 20)

/* Free blocks of the order hinting takes (MAX_PAGE_ORDER: 512 MiB with 64 KiB pages). */
static unsigned long free_hint_blocks(void)
{
	unsigned long blocks = 0;
	struct zone *zone;

	for_each_populated_zone(zone) {
		/* Read without the zone lock: the count only decides whether a case can run. */
		blocks += data_race(zone->free_area[MAX_PAGE_ORDER].nr_free);
	}
	return blocks;
}

/* Hinting needs @n free blocks to lend: a guest without them cannot run the case. */
#define th_need_hint_blocks(test, n)                                           \
	do {                                                                   \
		unsigned long __free = free_hint_blocks(), __n = (n);         \
									       \
		if (__free < __n)                                              \
			kunit_skip(test,                                       \
				   "hinting takes free %lu MiB blocks: %lu free, %lu needed", \
				   TH_HINT_BLOCK_MIB, __free, __n);            \
	} while (0)

/*
 * Page reporting keeps the order of its first registration until boot: another suite's (the
 * balloon core's, with none) may have fixed it already. The driver's own is what is tested.
 */
static void th_forget_report_order(void)
{
	page_reporting_order = PAGE_REPORTING_ORDER_UNSPECIFIED;
}

static void th_drain_local(struct work_struct *work)
{
	drain_local_pages(NULL);
}

/* Free pages, with those on the per-cpu lists back in the free areas first. */
static unsigned long free_pages_drained(void)
{
	schedule_on_each_cpu(th_drain_local);
	return global_zone_page_state(NR_FREE_PAGES);
}

/*
 * A balloon device offering @features, not registered yet: the case sets how the host misbehaves
 * first, since the host may use the buffers the driver queues while probing as soon as the
 * driver is ready.
 */
static struct test_host *th_new(struct kunit *test, u64 features)
{
	static atomic_t devices;
	struct test_host *th;
	struct device *parent;
	char name[32];

	/* A name of its own: a case may make several devices, and the names stay until its end. */
	snprintf(name, sizeof(name), "rballoon-hostile-host-%d", atomic_inc_return(&devices));
	parent = kunit_device_register(test, name);
	KUNIT_ASSERT_NOT_ERR_OR_NULL(test, parent);
	th = kzalloc_obj(*th, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, th);
	spin_lock_init(&th->lock);
	INIT_WORK(&th->work, th_work);
	th->features = features | BIT_ULL(VIRTIO_F_VERSION_1);
	th->vdev.dev.parent = parent;
	th->vdev.dev.release = th_release;
	th->vdev.id.device = VIRTIO_ID_BALLOON;
	th->vdev.id.vendor = VIRTIO_DEV_ANY_ID;
	th->vdev.config = &th_config_ops;
	return th;
}

/* Registers the device; rballoon must bind it. Kept alive until th_destroy(). */
static void th_start(struct kunit *test, struct test_host *th)
{
	if (register_virtio_device(&th->vdev)) {
		put_device(&th->vdev.dev);
		KUNIT_FAIL_AND_ABORT(test, "cannot register the device");
	}
	get_device(&th->vdev.dev);
	if (!th->vdev.dev.driver || strcmp(th->vdev.dev.driver->name, "rballoon")) {
		const char *name = th->vdev.dev.driver ? th->vdev.dev.driver->name : "no driver";

		unregister_virtio_device(&th->vdev);
		put_device(&th->vdev.dev);
		/* The C driver, built in, binds first: it must be a module or absent. */
		kunit_skip(test, "the balloon device is bound to %s, not rballoon", name);
	}
}

/* Removes the device; returns how long removal took, in ms. */
static unsigned int th_remove(struct test_host *th)
{
	unsigned long t0 = jiffies;

	unregister_virtio_device(&th->vdev);
	return jiffies_to_msecs(jiffies - t0);
}

static void th_destroy(struct test_host *th)
{
	put_device(&th->vdev.dev);
}

/* The host changes a configuration field and raises the config interrupt. */
static void th_set_config(struct test_host *th, __le32 *field, u32 value)
{
	spin_lock_irq(&th->lock);
	*field = cpu_to_le32(value);
	th->generation++;
	spin_unlock_irq(&th->lock);
	virtio_config_changed(&th->vdev);
}

static void th_set_target(struct test_host *th, u32 pages)
{
	th_set_config(th, &th->cfg.num_pages, pages);
}

/*
 * The host comes back: it uses the buffers it kept on queue @i, as a VMM that was stopped
 * does when it runs again, and those that come after.
 */
static void th_give_back(struct test_host *th, int i)
{
	WRITE_ONCE(th->keep[i], false);
	WRITE_ONCE(th->give_back[i], true);
	schedule_work(&th->work);
}

static void th_set_cmd_id(struct test_host *th, u32 id)
{
	th_set_config(th, &th->cfg.free_page_hint_cmd_id, id);
}

static u32 th_actual(struct test_host *th)
{
	u32 actual;

	spin_lock_irq(&th->lock);
	actual = le32_to_cpu(th->cfg.actual);
	spin_unlock_irq(&th->lock);
	return actual;
}

static unsigned long th_reported(struct test_host *th)
{
	unsigned long bytes;

	spin_lock_irq(&th->lock);
	bytes = th->reported_bytes;
	spin_unlock_irq(&th->lock);
	return bytes;
}

/* Whether the driver sent command id @id at position @from or later. */
static bool th_sent_cmd_id(struct test_host *th, unsigned int from, u32 id)
{
	bool sent = false;
	unsigned int i;

	spin_lock_irq(&th->lock);
	for (i = from; i < th->ncmd_ids; i++)
		sent |= th->cmd_ids[i] == id;
	spin_unlock_irq(&th->lock);
	return sent;
}

/* Polls @cond every 20 ms for at most @ms; its last value. */
#define th_wait_for(cond, ms)                                                  \
	({                                                                     \
		unsigned long __end = jiffies + msecs_to_jiffies(ms);          \
		bool __ok;                                                     \
		while (!(__ok = (cond)) && time_before(jiffies, __end))        \
			msleep(20);                                            \
		__ok;                                                          \
	})

#define FEATURES_BASE BIT_ULL(VIRTIO_BALLOON_F_MUST_TELL_HOST)

/* ---- The cases. ---- */

/*
 * The host takes inflate requests and never uses them. The driver waits a bounded time, keeps
 * the pages it allocated in the balloon (the host may have discarded them) and says so in
 * `actual`, sends nothing more however the target moves, and its removal does not wait again.
 */
static void a_host_keeping_inflate_requests_stops_the_balloon_not_the_guest(struct kunit *test)
{
	unsigned long base = balloon_pages(), seen;
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int ms;
	u32 held;

	th->keep[TH_INFLATE] = true;
	th_start(test, th);
	th_set_target(th, 1024);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->pfns_inflated) > 0, 5000));
	/* The driver gives up after its timeout and reports what the balloon holds. */
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) > 0, TH_DRIVER_TIMEOUT_MS + 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, (unsigned long)th_actual(th));
	KUNIT_EXPECT_LE(test, (unsigned long)th_actual(th), READ_ONCE(th->pfns_inflated));

	/* Neither requests nor pages for a host that stopped answering. */
	seen = READ_ONCE(th->pfns_inflated);
	held = th_actual(th);
	th_set_target(th, 4096);
	msleep(500);
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_inflated), seen);
	KUNIT_EXPECT_EQ(test, th_actual(th), held);
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, (unsigned long)held);

	ms = th_remove(th);
	kunit_info(test, "removal took %u ms\n", ms);
	KUNIT_EXPECT_LT_MSG(test, ms, 5000U, "removal waited for a silent host");
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * Inflating 16 MiB (4096 pages: 16 full requests of 256 PFNs with 4 KiB pages) against a host
 * that answers: the driver hands the host several requests before it waits for them, and
 * notifies it once per batch, not once per request.
 */
static void several_requests_go_to_the_host_with_one_notification(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int requests, notifies, most;

	th_start(test, th);
	th_set_target(th, 4096);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 4096, 10000));
	spin_lock_irq(&th->lock);
	requests = th->requests[TH_INFLATE];
	notifies = th->notifies[TH_INFLATE];
	most = th->queued_max[TH_INFLATE];
	spin_unlock_irq(&th->lock);
	kunit_info(test, "%u inflate requests, %u notifications, at most %u with the host\n",
		   requests, notifies, most);
	KUNIT_EXPECT_GE(test, requests, 4096U / TH_PFNS_PER_REQUEST);
	KUNIT_EXPECT_GE_MSG(test, most, 2U, "one request at a time");
	KUNIT_EXPECT_LE_MSG(test, notifies * 2, requests, "a notification per request");

	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	/*
	 * Full requests, and none longer than C's VIRTIO_BALLOON_ARRAY_PFNS_MAX: Firecracker and
	 * cloud-hypervisor ignore a request of more than 256 PFNs.
	 */
	KUNIT_EXPECT_EQ_MSG(test, th->pfns_per_request_max[TH_INFLATE], TH_PFNS_PER_REQUEST,
			    "inflate requests not of 256 PFNs");
	KUNIT_EXPECT_EQ_MSG(test, th->pfns_per_request_max[TH_DEFLATE], TH_PFNS_PER_REQUEST,
			    "deflate requests not of 256 PFNs");
	th_remove(th);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * Removing the driver with the balloon inflated deflates it first and tells the host of every
 * page it gives back (MUST_TELL_HOST), as C's remove_common() does: a host not told would go on
 * treating pages the guest uses again as its own. `actual` says the balloon is empty.
 */
static void removal_tells_the_host_of_every_page_it_gives_back(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);

	th_start(test, th);
	th_set_target(th, 2048);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 2048, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 2048UL);
	th_remove(th);
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_inflated), 2048UL);
	KUNIT_EXPECT_EQ_MSG(test, READ_ONCE(th->pfns_deflated), 2048UL,
			    "removal gave pages back without telling the host");
	KUNIT_EXPECT_EQ(test, th_actual(th), 0U);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/* The value of statistic @tag in the last statistics the host got; U64_MAX if it was not there. */
static u64 th_stat(struct test_host *th, u16 tag)
{
	u64 val = U64_MAX;
	unsigned int i;

	spin_lock_irq(&th->lock);
	for (i = 0; i < th->nstats; i++)
		if (th->stats[i].tag == tag)
			val = th->stats[i].val;
	spin_unlock_irq(&th->lock);
	return val;
}

/*
 * Each statistics request is answered with the guest's memory as it is then: after the guest
 * took 64 MiB, the host's next answer has that much less free memory, not a copy of the first.
 */
static void statistics_are_gathered_anew_at_every_request(struct kunit *test)
{
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ));
	unsigned long take = 64UL << 20, i, answers;
	struct page *page, *next;
	struct list_head taken;
	u64 before, after;

	INIT_LIST_HEAD(&taken);

	th_start(test, th);
	/* The buffer the driver primed at probe, answered and kept by the host, as QEMU does. */
	KUNIT_ASSERT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) == 1, 5000));
	before = th_stat(th, VIRTIO_BALLOON_S_MEMFREE);
	KUNIT_ASSERT_NE(test, before, U64_MAX);
	for (i = 0; i < take >> PAGE_SHIFT; i++) {
		page = alloc_page(GFP_KERNEL);
		if (!page)
			break;
		list_add(&page->lru, &taken);
	}
	KUNIT_EXPECT_EQ(test, i, take >> PAGE_SHIFT);
	/* The host asks again: it uses the buffer it kept. */
	answers = READ_ONCE(th->stats_answers);
	th_give_back(th, TH_STATS);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) > answers, 5000));
	after = th_stat(th, VIRTIO_BALLOON_S_MEMFREE);
	list_for_each_entry_safe(page, next, &taken, lru) {
		list_del(&page->lru);
		__free_page(page);
	}
	kunit_info(test, "free memory told: %llu MiB, then %llu MiB with %lu MiB taken\n",
		   before >> 20, after >> 20, take >> 20);
	/* Three quarters: the per-cpu lists and other allocations move a little either way. */
	KUNIT_EXPECT_LE_MSG(test, after, before - take / 4 * 3,
			    "the second answer does not show the memory the guest took");
	th_remove(th);
	th_destroy(th);
}

/*
 * The host stops using inflate requests for longer than the driver waits (a VMM stopped with
 * SIGSTOP, a frozen cgroup), then uses them after all. The balloon waits for it meanwhile, and
 * then follows the target again, up and down, with every page accounted for.
 */
static void a_host_that_stalls_on_inflate_then_answers_is_followed_again(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int ms;

	th->keep[TH_INFLATE] = true;
	th_start(test, th);
	th_set_target(th, 1024);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->pfns_inflated) > 0, 5000));
	/*
	 * Past the driver's timeout it stalls with what it had inflated, and says so in `actual`
	 * (waited for rather than slept: a loaded machine makes the debug guest late by seconds).
	 */
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) > 0, TH_DRIVER_TIMEOUT_MS + 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, (unsigned long)th_actual(th));

	th_give_back(th, TH_INFLATE);
	th_set_target(th, 4096);
	KUNIT_EXPECT_TRUE_MSG(test, th_wait_for(th_actual(th) == 4096, 10000),
			      "the balloon did not follow the target once the host answered: %u",
			      th_actual(th));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 4096UL);
	KUNIT_EXPECT_GE(test, READ_ONCE(th->pfns_inflated), 4096UL);

	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	KUNIT_EXPECT_GE(test, READ_ONCE(th->pfns_deflated), 4096UL);

	ms = th_remove(th);
	KUNIT_EXPECT_LT(test, ms, 5000U);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * Starts @th, inflates 2048 pages, then keeps the deflate requests that bring the balloon back
 * to 0 past the driver's timeout: with MUST_TELL_HOST every page it could not tell the host
 * about is back in the balloon, and `actual` says so. @base: balloon_pages() before the start.
 */
static void th_keep_deflating(struct kunit *test, struct test_host *th, unsigned long base)
{
	th_start(test, th);
	th_set_target(th, 2048);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 2048, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 2048UL);

	th->keep[TH_DEFLATE] = true;
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->pfns_deflated) > 0, 5000));
	/*
	 * Past the driver's timeout every page of the held requests is back in the balloon (waited
	 * for rather than slept: a loaded machine makes the debug guest late by seconds).
	 */
	KUNIT_EXPECT_TRUE(test, th_wait_for(balloon_pages() - base == 2048,
					    TH_DRIVER_TIMEOUT_MS + 10000));
	KUNIT_EXPECT_EQ(test, th_actual(th), 2048U);
}

/*
 * The same with deflate requests: the pages the host was not told of stay in the balloon while
 * it sleeps (MUST_TELL_HOST), and leave once it has used the requests it held, the target being
 * reached without another config change.
 */
static void a_host_that_stalls_on_deflate_then_answers_is_followed_again(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);

	th_keep_deflating(test, th, base);
	th_give_back(th, TH_DEFLATE);
	KUNIT_EXPECT_TRUE_MSG(test, th_wait_for(th_actual(th) == 0, 10000),
			      "the balloon did not deflate once the host answered: %u",
			      th_actual(th));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);

	th_remove(th);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/* A migration target, as compaction allocates one. */
/* The frame th_new_folio() last gave compaction to move a balloon page to. */
static unsigned long th_migrated_to;

static struct folio *th_new_folio(struct folio *src, unsigned long private)
{
	struct page *page = alloc_page(GFP_HIGHUSER_MOVABLE);

	if (!page)
		return NULL;
	WRITE_ONCE(th_migrated_to, page_to_pfn(page));
	return page_folio(page);
}

/* Migrates the balloon page at @pfn as compaction does; returns migrate_pages()'s result. */
/* The guest page balloon PFN @pfn (4 KiB units) falls in. */
static struct page *th_balloon_page(unsigned long pfn)
{
	return pfn_to_page(pfn >> (PAGE_SHIFT - VIRTIO_BALLOON_PFN_SHIFT));
}

/* Migrates the balloon page that balloon PFN @pfn falls in. */
static int th_compact_one(unsigned long pfn)
{
	struct page *page = th_balloon_page(pfn);
	LIST_HEAD(pages);
	int ret;

	if (!isolate_movable_ops_page(page, 0))
		return -EBUSY;
	list_add(&page->lru, &pages);
	ret = migrate_pages(&pages, th_new_folio, NULL, 0, MIGRATE_SYNC, MR_COMPACTION, NULL);
	if (ret)
		putback_movable_pages(&pages);
	return ret;
}

/*
 * Compaction moves a balloon page while the host holds deflate requests. With MUST_TELL_HOST
 * the old page may leave the balloon only once the host knows, so the migration fails after
 * the driver's timeout and the page stays in the balloon: still there, still counted, and
 * deflated (told) with the rest once the host answers. Then a migration goes through, and the
 * host hears of the new page.
 */
static void a_migration_the_host_was_not_told_of_fails(struct kunit *test)
{
	unsigned long base = balloon_pages(), pfn, inflated;
	struct test_host *th = th_new(test, FEATURES_BASE);
	int ret;

	if (!IS_ENABLED(CONFIG_BALLOON_MIGRATION))
		kunit_skip(test, "no balloon migration in this kernel");
	th_start(test, th);
	th_set_target(th, 1024);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 1024, 10000));
	pfn = READ_ONCE(th->inflated_pfn);
	inflated = READ_ONCE(th->pfns_inflated);

	th->keep[TH_DEFLATE] = true;
	ret = th_compact_one(pfn);
	KUNIT_EXPECT_NE_MSG(test, ret, 0, "the page left the balloon untold");
	KUNIT_EXPECT_TRUE(test, page_has_movable_ops(th_balloon_page(pfn)));
	/* Nothing new was inflated for a migration that failed. */
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_inflated), inflated);
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 1024UL);
	KUNIT_EXPECT_EQ(test, th_actual(th), 1024U);

	th_give_back(th, TH_DEFLATE);
	/*
	 * With a host that answers, a migration goes through, and the host is told of the new page
	 * (inflated) as well as of the old one: else it would go on backing a frame the guest has
	 * put in the balloon.
	 */
	inflated = READ_ONCE(th->pfns_inflated);
	/* The driver refuses migrations until it has taken the held requests back. */
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_compact_one(th->pfns[1]) == 0, 10000));
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_inflated) - inflated,
			PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT);
	KUNIT_EXPECT_EQ_MSG(test, (unsigned long)READ_ONCE(th->inflated_pfn),
			    READ_ONCE(th_migrated_to) << (PAGE_SHIFT - VIRTIO_BALLOON_PFN_SHIFT),
			    "the host was not told of the page migrated to");
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 1024UL);

	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_remove(th);
	th_destroy(th);
}

/*
 * The host takes deflate requests and never uses them. With MUST_TELL_HOST no page may go back
 * to the guest before the host was told, so every page stays in the balloon, `actual` stays
 * what the balloon holds, and removal (which deflates) is bounded. Once the device is reset the
 * pages are the guest's again.
 */
static void a_host_keeping_deflate_requests_keeps_the_pages_in_the_balloon(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int ms;

	th_keep_deflating(test, th, base);
	ms = th_remove(th);
	KUNIT_EXPECT_LT_MSG(test, ms, 5000U, "removal waited for a silent host");
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * Every buffer comes back with a used length far beyond anything the driver queued (and the
 * driver's buffers are all device-readable, so any length but 0 is a lie). The driver must not
 * trust it: inflating, answering statistics and deflating work as with an honest host.
 */
static void used_lengths_the_driver_never_gave_are_ignored(struct kunit *test)
{
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ));

	th->used_len = U32_MAX;
	th->stats_requests = 3;
	th_start(test, th);
	th_set_target(th, 4096);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 4096, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 4096UL);
	/* The primed buffer and one answer per request, the last kept by the host. */
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) == 4, 5000));
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	KUNIT_EXPECT_EQ(test, th->pfns_inflated, th->pfns_deflated);
	th_remove(th);
	th_destroy(th);
}

/*
 * The host asks for statistics again the moment each answer arrives, thousands of times, and
 * raises config interrupts in a storm meanwhile. The driver answers every request with one
 * buffer at a time, never piles buffers up, and still follows the target afterwards.
 */
static void statistics_asked_faster_than_answered(struct kunit *test)
{
	const unsigned int requests = 2000;
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ));
	unsigned int i;

	th->stats_requests = requests;
	th_start(test, th);
	for (i = 0; i < 10 * requests; i++)
		virtio_config_changed(&th->vdev);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) == requests + 1,
					    60000));
	KUNIT_EXPECT_EQ_MSG(test, th->stats_queued_max, 1U,
			    "more than one statistics buffer with the host at a time");

	th_set_target(th, 1024);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 1024, 10000));
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	th_remove(th);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * Free page hinting with command ids that go back and forth (a new id, an older one, the new
 * one again, a newer one) while the host keeps every block lent to it, and still keeps them
 * after it said DONE. Each id the driver reports is one the host set, the host never holds
 * more than the driver's window, removal does not wait for the blocks, and once the device is
 * gone every block is back with the page allocator.
 */
static void hint_command_ids_out_of_order(struct kunit *test)
{
	static const u32 ids[] = { 10, 3, 10, 11 };
	unsigned long free_before = free_pages_drained(), free_after;
	struct test_host *th;
	unsigned int i, j, ms;

	th_need_hint_blocks(test, 1);
	th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_FREE_PAGE_HINT));
	th->keep_hint_blocks = true;
	th_start(test, th);
	for (i = 0; i < ARRAY_SIZE(ids); i++) {
		unsigned int from = READ_ONCE(th->ncmd_ids);

		th_set_cmd_id(th, ids[i]);
		/* Every id that differs from the one before starts a round, which reports it. */
		KUNIT_EXPECT_TRUE_MSG(test,
				      th_wait_for(th_sent_cmd_id(th, from, ids[i]),
						  TH_LEND_WAIT_MS + 5000),
				      "no round for command id %u", ids[i]);
		KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->hint_blocks_held) > 0, 5000));
		msleep(200);
	}
	KUNIT_EXPECT_LE(test, th->hint_blocks_held_max, TH_LEND_WINDOW);
	KUNIT_EXPECT_GE(test, th->ncmd_ids, 1U);
	for (i = 0; i < th->ncmd_ids; i++) {
		bool set = th->cmd_ids[i] == TH_CMD_ID_STOP;

		for (j = 0; j < ARRAY_SIZE(ids); j++)
			set |= th->cmd_ids[i] == ids[j];
		KUNIT_EXPECT_TRUE_MSG(test, set, "the driver reported command id %u",
				      th->cmd_ids[i]);
	}
	th_set_cmd_id(th, TH_CMD_ID_DONE);
	msleep(500);
	ms = th_remove(th);
	kunit_info(test, "host held at most %u blocks; removal took %u ms\n",
		   th->hint_blocks_held_max, ms);
	KUNIT_EXPECT_LT_MSG(test, ms, TH_DRIVER_TIMEOUT_MS + 5000,
			    "removal waited unbounded for blocks the host keeps");
	th_destroy(th);
	free_after = free_pages_drained();
	/* A block is 1 << MAX_PAGE_ORDER pages: losing one shows. */
	KUNIT_EXPECT_LT(test, free_before - min(free_before, free_after),
			1UL << (MAX_PAGE_ORDER - 1));
}

/*
 * The host returns an inflate request under an id the driver never queued. The kernel's ring
 * code marks the queue broken; the driver sees that at once instead of waiting for its timeout,
 * stops the balloon where it is, accounts for what it holds, and loses no page.
 */
static void a_used_id_the_driver_never_queued_stops_the_balloon_at_once(struct kunit *test)
{
	unsigned long base = balloon_pages(), t0, seen;
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int ms;
	u32 held;

	th->bad_head[TH_INFLATE] = true;
	th_start(test, th);
	t0 = jiffies;
	th_set_target(th, 1024);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) > 0, TH_DRIVER_TIMEOUT_MS / 3));
	ms = jiffies_to_msecs(jiffies - t0);
	kunit_info(test, "the driver stopped after %u ms with %u pages\n", ms, th_actual(th));
	KUNIT_EXPECT_LT_MSG(test, ms, TH_DRIVER_TIMEOUT_MS / 3,
			    "the driver waited for a queue that is broken");
	KUNIT_EXPECT_TRUE(test, virtqueue_is_broken(th->vqs[TH_INFLATE].vq));
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, (unsigned long)th_actual(th));

	/* A broken queue gets no more requests, and the balloon takes no more pages. */
	seen = READ_ONCE(th->pfns_inflated);
	held = th_actual(th);
	th_set_target(th, 4096);
	msleep(500);
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_inflated), seen);
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, (unsigned long)held);

	ms = th_remove(th);
	KUNIT_EXPECT_LT_MSG(test, ms, 5000U, "removal waited for a broken queue");
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * The host takes a report of free pages and never gives them back. They are the guest's free
 * memory, lent for the report only, and mm's reporting worker waits for them for as long as the
 * driver stays; removal, which stops the reporting worker, waits a bounded time, then stops the
 * device (only a stopped device is sure to let go of them) so the pages go back to the free
 * lists.
 */
static void a_host_keeping_reported_pages_does_not_keep_them(struct kunit *test)
{
	/* Free pages come and go by a few per-cpu batches meanwhile; a lost block shows. */
	const unsigned long slack = 1UL << (MAX_PAGE_ORDER - 1);
	unsigned long free_before = free_pages_drained(), free_held, free_after;
	unsigned long base = balloon_pages(), held;
	/* With page poisoning (the debug config) the driver reports only if it can say so. */
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_REPORTING) |
				      BIT_ULL(VIRTIO_BALLOON_F_PAGE_POISON));
	unsigned int ms;

	th->keep[TH_REPORTING] = true;
	th_forget_report_order();
	th_start(test, th);
	/*
	 * The smallest block reported: 2 MiB with 64 KiB pages, as the C driver sets it (the core's
	 * default there, pageblock_order, is 512 MiB); pageblock_order with smaller pages.
	 */
	KUNIT_EXPECT_EQ(test, page_reporting_order,
			PAGE_SHIFT >= 16 ? 21 - PAGE_SHIFT : pageblock_order);
	/* Page reporting starts two seconds after the driver registers. */
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_reported(th) > 0, 10000));
	held = th_reported(th) >> PAGE_SHIFT;
	/* The test measures something: the reported pages are out of the free lists. */
	free_held = free_pages_drained();
	KUNIT_EXPECT_GE(test, free_before - min(free_before, free_held) + slack, held);

	ms = th_remove(th);
	kunit_info(test, "the host kept %lu pages; removal took %u ms\n", held, ms);
	KUNIT_EXPECT_LT_MSG(test, ms, TH_DRIVER_TIMEOUT_MS + 5000,
			    "removal waited unbounded for reported pages");
	KUNIT_EXPECT_EQ(test, th_reported(th) >> PAGE_SHIFT, held);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
	free_after = free_pages_drained();
	KUNIT_EXPECT_LT(test, free_before - min(free_before, free_after), slack);
}

/*
 * A VMM stopped for longer than the driver's timeout (SIGSTOP, a frozen cgroup) while it holds
 * a report of free pages and the statistics buffer. The balloon still follows the target
 * meanwhile, the device is not reset, and once the host runs again it gets its statistics
 * answered, the balloon reaches the next targets, and no page is lost.
 */
static void a_host_stalled_on_a_report_and_statistics_stops_nothing(struct kunit *test)
{
	const unsigned long slack = 1UL << (MAX_PAGE_ORDER - 1);
	unsigned long free_before = free_pages_drained(), free_after;
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ) |
				      BIT_ULL(VIRTIO_BALLOON_F_REPORTING) |
				      BIT_ULL(VIRTIO_BALLOON_F_PAGE_POISON));
	unsigned int resets;

	th->keep[TH_REPORTING] = true;
	th->keep[TH_STATS] = true;
	th_forget_report_order();
	th->stats_requests = 1;
	th_start(test, th);
	resets = READ_ONCE(th->resets);
	/* Page reporting starts two seconds after the driver registers. */
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_reported(th) > 0, 10000));
	KUNIT_ASSERT_EQ(test, READ_ONCE(th->stats_answers), 1UL);
	msleep(TH_STALL_MS);

	th_set_target(th, 1024);
	KUNIT_EXPECT_TRUE_MSG(test, th_wait_for(th_actual(th) == 1024, 10000),
			      "a report held %u ms stopped the balloon", TH_STALL_MS);
	KUNIT_EXPECT_EQ_MSG(test, READ_ONCE(th->resets), resets, "the device was reset");

	th_give_back(th, TH_REPORTING);
	th_give_back(th, TH_STATS);
	KUNIT_EXPECT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) == 2, 5000));
	th_set_target(th, 2048);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 2048, 10000));
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_remove(th);
	th_destroy(th);
	free_after = free_pages_drained();
	KUNIT_EXPECT_LT(test, free_before - min(free_before, free_after), slack);
}

/*
 * Free page hinting with a host that keeps every block it is told of. A round waits for it only
 * briefly before it ends with the stop id (it runs on a freezable workqueue: suspend gives up
 * after 20 s), and DONE gives every block back to the page allocator at once, although the host
 * never gave the buffers back, while the device lives.
 */
static void done_frees_the_blocks_a_host_keeps(struct kunit *test)
{
	/* Less than one block: the window is at least one. */
	const unsigned long slack = 1UL << (MAX_PAGE_ORDER - 1);
	unsigned long free_before = free_pages_drained(), t0;
	struct test_host *th;
	bool ended, freed;
	unsigned int ms;

	th_need_hint_blocks(test, TH_LEND_WINDOW);
	th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_FREE_PAGE_HINT));
	th->keep_hint_blocks = true;
	th_start(test, th);
	t0 = jiffies;
	th_set_cmd_id(th, 10);
	KUNIT_ASSERT_TRUE(test, th_wait_for(READ_ONCE(th->hint_blocks_held) ==
					    TH_LEND_WINDOW, 5000));
	ended = th_wait_for(th_sent_cmd_id(th, 1, TH_CMD_ID_STOP), TH_LEND_WAIT_MS + 3000);
	KUNIT_EXPECT_TRUE_MSG(test, ended, "the round waited more than %u ms for the host",
			      TH_LEND_WAIT_MS + 3000);
	ms = jiffies_to_msecs(jiffies - t0);
	kunit_info(test, "host holds %u blocks; the round ended after %u ms\n",
		   th->hint_blocks_held, ms);
	/* The test measures something: the blocks are out of the free lists. */
	KUNIT_EXPECT_GE(test, free_before - min(free_before, free_pages_drained()) + slack,
			TH_LEND_WINDOW << MAX_PAGE_ORDER);

	th_set_cmd_id(th, TH_CMD_ID_DONE);
	freed = th_wait_for(free_before - min(free_before, free_pages_drained()) < slack, 2000);
	KUNIT_EXPECT_TRUE_MSG(test, freed, "DONE left blocks the host keeps allocated");
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->hint_blocks_held), TH_LEND_WINDOW);
	th_remove(th);
	th_destroy(th);
}

/*
 * Freeze while the device claims to be reset already (its status reads 0) and holds inflate
 * requests. The driver does not take the host's word for it: it breaks the queues and resets
 * the device itself before it frees what the queues held, and every reset it makes comes with
 * the queues broken first.
 */
static void freeze_stops_a_device_that_claims_to_be_reset(struct kunit *test)
{
#ifdef CONFIG_PM_SLEEP
	unsigned long base = balloon_pages();
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned long deflated;
	unsigned int resets;

	th_start(test, th);
	th_set_target(th, 1024);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 1024, 10000));

	resets = READ_ONCE(th->resets);
	deflated = READ_ONCE(th->pfns_deflated);
	WRITE_ONCE(th->claim_reset, true);
	KUNIT_EXPECT_EQ(test, virtio_device_freeze(&th->vdev), 0);
	KUNIT_EXPECT_EQ_MSG(test, READ_ONCE(th->resets), resets + 1,
			    "freeze believed the device's status instead of resetting it");
	/* As in C, freeze empties the balloon, telling the host, and restore fills it again. */
	KUNIT_EXPECT_EQ_MSG(test, balloon_pages(), base, "freeze kept the balloon's pages");
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->pfns_deflated) - deflated, 1024UL);
	WRITE_ONCE(th->claim_reset, false);
	KUNIT_EXPECT_EQ(test, virtio_device_restore(&th->vdev), 0);
	KUNIT_EXPECT_TRUE_MSG(test, th_wait_for(th_actual(th) == 1024, 10000),
			      "restore did not inflate back to the target");
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 1024UL);
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_remove(th);
	KUNIT_EXPECT_FALSE_MSG(test, READ_ONCE(th->reset_unbroken),
			       "the device was reset with its queues not broken");
	th_destroy(th);
#else
	kunit_skip(test, "needs CONFIG_PM_SLEEP");
#endif
}

/*
 * The system freezes while the host keeps deflate requests. Freeze deflates the balloon first,
 * so it must not wait for the host forever; the pages it could not tell the host about stay in
 * the balloon. After restore the device is a new one: the balloon follows the host again (which
 * now answers), and every page comes back.
 */
static void freeze_with_a_silent_host_is_bounded_and_restore_starts_afresh(struct kunit *test)
{
#ifdef CONFIG_PM_SLEEP
	unsigned long base = balloon_pages(), t0;
	struct test_host *th = th_new(test, FEATURES_BASE);
	unsigned int ms;

	th_start(test, th);
	th_set_target(th, 2048);
	KUNIT_ASSERT_TRUE(test, th_wait_for(th_actual(th) == 2048, 10000));

	th->keep[TH_DEFLATE] = true;
	t0 = jiffies;
	KUNIT_EXPECT_EQ(test, virtio_device_freeze(&th->vdev), 0);
	ms = jiffies_to_msecs(jiffies - t0);
	kunit_info(test, "freeze took %u ms\n", ms);
	KUNIT_EXPECT_LT_MSG(test, ms, TH_DRIVER_TIMEOUT_MS + 5000,
			    "freeze waited unbounded for the host");
	KUNIT_EXPECT_EQ(test, balloon_pages() - base, 2048UL);

	th->keep[TH_DEFLATE] = false;
	KUNIT_EXPECT_EQ(test, virtio_device_restore(&th->vdev), 0);
	KUNIT_EXPECT_EQ(test, th_actual(th), 2048U);
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_remove(th);
	th_destroy(th);
#else
	kunit_skip(test, "needs CONFIG_PM_SLEEP");
#endif
}

/*
 * A legacy device (no VIRTIO_F_VERSION_1) reads PFNs and statistics in the guest's byte order
 * (__virtio32, __virtio16/64), as QEMU does with virtio_ldl_p() and virtio_tswap*(): on a
 * big-endian guest (s390, ppc32) a driver writing them little-endian names other pages to the
 * host. Decoded as the spec says, the statistics are the 16 tags at most once each with this
 * guest's total memory, and every PFN names a page in the balloon.
 */
static void a_legacy_device_gets_pfns_and_statistics_in_the_guests_byte_order(struct kunit *test)
{
	const unsigned int shift = PAGE_SHIFT - VIRTIO_BALLOON_PFN_SHIFT;
	struct test_host *th = th_new(test, FEATURES_BASE | BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ));
	struct { u16 tag; u64 val; } stats[VIRTIO_BALLOON_S_NR];
	unsigned long base = balloon_pages(), memtot = 0;
	bool seen[VIRTIO_BALLOON_S_NR] = {};
	unsigned int i, n, offline = 0;

	th->features &= ~BIT_ULL(VIRTIO_F_VERSION_1);
	/* Answer the statistics queued at probe, then keep the fresh ones, as QEMU does. */
	th->stats_requests = 1;
	th_start(test, th);
	KUNIT_ASSERT_FALSE(test, virtio_has_feature(&th->vdev, VIRTIO_F_VERSION_1));
	KUNIT_ASSERT_TRUE(test, th_wait_for(READ_ONCE(th->stats_answers) == 2, 10000));
	spin_lock_irq(&th->lock);
	n = th->nstats;
	memcpy(stats, th->stats, sizeof(stats));
	spin_unlock_irq(&th->lock);
	KUNIT_EXPECT_GE(test, n, 4U);
	for (i = 0; i < n; i++) {
		KUNIT_EXPECT_LT(test, stats[i].tag, VIRTIO_BALLOON_S_NR);
		if (stats[i].tag >= VIRTIO_BALLOON_S_NR)
			continue;
		KUNIT_EXPECT_FALSE(test, seen[stats[i].tag]);
		seen[stats[i].tag] = true;
		if (stats[i].tag == VIRTIO_BALLOON_S_MEMTOT)
			memtot = stats[i].val >> PAGE_SHIFT;
	}
	KUNIT_EXPECT_EQ(test, memtot, totalram_pages());

	th_set_target(th, TH_PFNS_MAX);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == TH_PFNS_MAX, 10000));
	KUNIT_EXPECT_EQ(test, READ_ONCE(th->npfns), TH_PFNS_MAX);
	for (i = 0; i < READ_ONCE(th->npfns); i++) {
		unsigned long pfn = th->pfns[i] >> shift;

		offline += pfn_valid(pfn) && PageOffline(pfn_to_page(pfn));
	}
	KUNIT_EXPECT_EQ_MSG(test, offline, TH_PFNS_MAX,
			    "PFNs the host read that name no page in the balloon");
	th_set_target(th, 0);
	KUNIT_EXPECT_TRUE(test, th_wait_for(th_actual(th) == 0, 10000));
	th_remove(th);
	KUNIT_EXPECT_EQ(test, balloon_pages(), base);
	th_destroy(th);
}

/*
 * For each subset of the optional queues (stats, free page hinting, reporting) the host offers,
 * every queue the driver makes lands where the host has it: the queue the device uses for a
 * purpose carries the driver's name for that purpose. A driver that declined an offered queue
 * feature other than the last would shift the ones after it.
 */
static void queues_are_where_the_host_numbers_them(struct kunit *test)
{
	static const char *const names[TH_NUM_VQS] = {
		"inflate", "deflate", "stats", "free_page_vq", "reporting_vq"
	};
	static const u64 optional[] = {
		BIT_ULL(VIRTIO_BALLOON_F_STATS_VQ),
		BIT_ULL(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
		BIT_ULL(VIRTIO_BALLOON_F_REPORTING) | BIT_ULL(VIRTIO_BALLOON_F_PAGE_POISON),
	};
	unsigned int subset, i, made, expected;

	for (subset = 0; subset < BIT(ARRAY_SIZE(optional)); subset++) {
		u64 features = FEATURES_BASE;
		struct test_host *th;

		for (i = 0; i < ARRAY_SIZE(optional); i++)
			if (subset & BIT(i))
				features |= optional[i];
		th = th_new(test, features);
		th_start(test, th);
		made = 0;
		for (i = 0; i < TH_NUM_VQS; i++) {
			if (!th->vqs[i].vq)
				continue;
			made++;
			KUNIT_EXPECT_STREQ_MSG(test, th->vqs[i].vq->name, names[i],
					       "offered %#llx: the host's %s queue", features,
					       names[i]);
		}
		expected = 2 + hweight32(subset);
		KUNIT_EXPECT_EQ_MSG(test, made, expected, "offered %#llx", features);
		th_remove(th);
		th_destroy(th);
	}
}

static struct kunit_case hostile_host_cases[] = {
	KUNIT_CASE(several_requests_go_to_the_host_with_one_notification),
	KUNIT_CASE(used_lengths_the_driver_never_gave_are_ignored),
	KUNIT_CASE(statistics_asked_faster_than_answered),
	KUNIT_CASE(statistics_are_gathered_anew_at_every_request),
	KUNIT_CASE(removal_tells_the_host_of_every_page_it_gives_back),
	KUNIT_CASE_SLOW(hint_command_ids_out_of_order),
	KUNIT_CASE_SLOW(a_host_keeping_inflate_requests_stops_the_balloon_not_the_guest),
	KUNIT_CASE_SLOW(a_host_keeping_deflate_requests_keeps_the_pages_in_the_balloon),
	KUNIT_CASE_SLOW(a_host_that_stalls_on_inflate_then_answers_is_followed_again),
	KUNIT_CASE_SLOW(a_host_that_stalls_on_deflate_then_answers_is_followed_again),
	KUNIT_CASE_SLOW(a_migration_the_host_was_not_told_of_fails),
	KUNIT_CASE(a_used_id_the_driver_never_queued_stops_the_balloon_at_once),
	KUNIT_CASE_SLOW(a_host_keeping_reported_pages_does_not_keep_them),
	KUNIT_CASE_SLOW(freeze_with_a_silent_host_is_bounded_and_restore_starts_afresh),
	KUNIT_CASE_SLOW(a_host_stalled_on_a_report_and_statistics_stops_nothing),
	KUNIT_CASE_SLOW(done_frees_the_blocks_a_host_keeps),
	KUNIT_CASE(freeze_stops_a_device_that_claims_to_be_reset),
	KUNIT_CASE(a_legacy_device_gets_pfns_and_statistics_in_the_guests_byte_order),
	KUNIT_CASE(queues_are_where_the_host_numbers_them),
	{}
};

static struct kunit_suite hostile_host_suite = {
	.name = "rballoon_hostile_host",
	.test_cases = hostile_host_cases,
};

kunit_test_suite(hostile_host_suite);

MODULE_DESCRIPTION("KUnit: the Rust virtio balloon driver against a hostile host");
MODULE_LICENSE("GPL");
