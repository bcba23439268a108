// SPDX-License-Identifier: GPL-2.0

#include <linux/pm_wakeup.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

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
