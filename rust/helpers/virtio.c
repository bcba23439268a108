// SPDX-License-Identifier: GPL-2.0

#include <linux/gfp.h>
#include <linux/pm_wakeup.h>
#include <linux/scatterlist.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/workqueue.h>

__rust_helper bool rust_helper_virtio_has_feature(const struct virtio_device *vdev,
						  unsigned int fbit)
{
	return virtio_has_feature(vdev, fbit);
}

__rust_helper void rust_helper___virtio_clear_bit(struct virtio_device *vdev,
						  unsigned int fbit)
{
	__virtio_clear_bit(vdev, fbit);
}

__rust_helper int rust_helper_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
					      struct virtqueue *vqs[],
					      struct virtqueue_info vqs_info[],
					      struct irq_affinity *desc)
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, desc);
}

__rust_helper void rust_helper_virtio_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

__rust_helper struct virtio_device *rust_helper_dev_to_virtio(struct device *dev)
{
	return dev_to_virtio(dev);
}

__rust_helper void rust_helper_virtio_synchronize_cbs(struct virtio_device *vdev)
{
	virtio_synchronize_cbs(vdev);
}

__rust_helper bool rust_helper_virtio_is_little_endian(struct virtio_device *vdev)
{
	return virtio_is_little_endian(vdev);
}

/*
 * Without CONFIG_PM_SLEEP these are static inline stubs; with it, bindgen binds the exported
 * functions directly and these helpers go unused.
 */
__rust_helper void rust_helper_pm_stay_awake(struct device *dev)
{
	pm_stay_awake(dev);
}

__rust_helper void rust_helper_pm_relax(struct device *dev)
{
	pm_relax(dev);
}

__rust_helper void rust_helper_device_set_wakeup_capable(struct device *dev, bool capable)
{
	device_set_wakeup_capable(dev, capable);
}

/*
 * A free block of 2^order pages if the page allocator has one at hand: no
 * reclaim, no emergency reserves, no warning. The flags of the C balloon's
 * free page hint blocks (VIRTIO_BALLOON_FREE_PAGE_ALLOC_FLAG).
 */
__rust_helper struct page *rust_helper_virtio_alloc_free_page_block(unsigned int order)
{
	return alloc_pages(__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC, order);
}

/* One scatterlist entry covering a whole block of 2^order pages. */
__rust_helper void rust_helper_virtio_sg_init_page_block(struct scatterlist *sg,
							 struct page *page,
							 unsigned int order)
{
	sg_init_table(sg, 1);
	sg_set_page(sg, page, PAGE_SIZE << order, 0);
}

/*
 * A device's own workqueue for long CPU-bound work, frozen during suspend: the
 * flags of the C balloon's "balloon-wq".
 */
__rust_helper struct workqueue_struct *rust_helper_virtio_alloc_own_workqueue(const char *name)
{
	return alloc_workqueue("%s", WQ_FREEZABLE | WQ_CPU_INTENSIVE | WQ_PERCPU, 0, name);
}

/*
 * Whether @vq hands buffers to the device at their guest-physical addresses,
 * with nothing mapped for it: vring_use_map_api() was false, so
 * virtqueue_dma_dev() is NULL, and the device has no mapping ops of its own.
 */
__rust_helper bool rust_helper_virtio_vq_addresses_guest_memory(struct virtqueue *vq)
{
	return !virtqueue_dma_dev(vq) && !vq->vdev->map;
}
