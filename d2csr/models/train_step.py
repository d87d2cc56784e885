"""The pieces of a training step without host overhead: mixed precision, the NaN/Inf guard, compiling.

- :class:`StepGuard`: the NaN/Inf guard as one fused check over all gradients
  (``torch._amp_foreach_non_finite_check_and_unscale_``, the kernel ``GradScaler`` uses) and the loss
  values, kept on the device. With an optimizer that takes a ``found_inf`` tensor (``fused: true``) the step
  is masked on the device and nothing waits for the host: the decision (raise for ``nan_policy: stop``,
  count for ``skip``) is read at the next sync point (:meth:`StepGuard.report`: the log line, a checkpoint,
  validation). Under ``stop`` the first bad step also masks every later one, so the weights stay those from
  before the bad step until the error is raised. With another optimizer the guard reads its flag right
  away (one host sync per step) and steps only when finite.
- fp16: a ``torch.amp.GradScaler`` unscales the gradients before the guard; a step it skips for inf
  gradients (overflow of the scaled gradients) is the scaler's business, not an error and not a skip. The
  caller updates the scaler once per iteration, after every optimizer's step (``scaler.update()``).
"""
import torch
import torch.distributed as dist

def takes_found_inf(optimizer):
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor on the device (PyTorch's fused optimizers)."""
    return bool(getattr(optimizer, '_step_supports_amp_scaling', False)) and all(
        group.get('fused') for group in optimizer.param_groups)


def _grads_by_device_and_dtype(optimizer):
    groups = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    return groups


class StepGuard:
    """NaN/Inf guard of a model's optimizer steps, its state on ``device``.

    Args:
        device (torch.device): where the flags live (the model's device).
        policy (str): ``'stop'`` or ``'skip'`` (``train: nan_policy``).
        distributed (bool): all-reduce the flags, so that every process takes the same decision.
    """

    def __init__(self, device, policy, distributed=False, handler=None):
        self.handler = handler  # called by report() with (new skips, first iteration, flags, values) when > 0
        self.device = torch.device(device)
        self.policy = policy
        self.distributed = distributed
        zeros = dict(device=self.device)
        self.iteration = torch.zeros((), dtype=torch.long, **zeros)  # the current iteration, on the device
        self.halted = torch.zeros((), dtype=torch.bool, **zeros)  # stop: a bad step happened, mask the rest
        self.skips = torch.zeros((), dtype=torch.long, **zeros)  # bad steps since the last report
        self.first_iter = torch.full((), -1, dtype=torch.long, **zeros)  # first bad one since the last report
        self.first_flags = torch.zeros(2, **zeros)  # its (bad loss, bad gradient), on any process
        self.first_local = torch.zeros(2, **zeros)  # the same, on this process
        self.first_values = {}  # loss names -> its loss values
        self.first_site = {}  # loss names -> whether that step was the first bad one
        self._one = torch.ones((), **zeros)
        self._found = {}
        self._next_iter = None
        self.reported_skips = 0  # host total (also what was restored on resume)

    def begin(self, current_iter):
        """Set the device iteration (a kernel with the value as argument; none while iterations are consecutive)."""
        if current_iter != self._next_iter:
            self.iteration.fill_(current_iter)
        else:
            self.iteration.add_(1)
        self._next_iter = current_iter + 1

    def step(self, optimizer, names, values, scaler=None, sync=False):
        """Check, then ``optimizer.step()`` where finite. ``values``: the loss terms, a ``(K,)`` fp32 tensor.

        With ``scaler`` (fp16) the gradients are unscaled first and inf/NaN gradients are left to the
        scaler (the step is skipped and the scale lowered, as ``GradScaler.step`` does); only a non-finite
        loss counts here. ``sync``: read the decision now (raise / warn) and step only when finite, for
        optimizers that do not take ``found_inf``. Returns nothing; :meth:`report` tells.
        """
        bad_loss = ~torch.isfinite(values).all()
        overflow = None
        if scaler is not None:
            scaler.unscale_(optimizer)
            found = scaler._per_optimizer_states[id(optimizer)]['found_inf_per_device'].values()
            overflow = torch.stack([f.to(self.device, non_blocking=True) for f in found]).amax() > 0 if found \
                else None
            bad_grad = torch.zeros((), dtype=torch.bool, device=self.device)
        else:
            found_all = []
            for (device, _), grads in _grads_by_device_and_dtype(optimizer).items():
                key = device
                if key not in self._found:
                    self._found[key] = (torch.zeros((), device=device), torch.ones((), device=device))
                found, one = self._found[key]
                found.zero_()
                # one fused kernel per device and dtype: found = 1 if any element of any gradient is not finite
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
                found_all.append(found.to(self.device, non_blocking=True))
            bad_grad = torch.stack(found_all).amax() > 0 if found_all else \
                torch.zeros((), dtype=torch.bool, device=self.device)
        local = torch.stack([bad_loss, bad_grad]).float()
        flags = local.clone()
        if self.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = flags.amax() > 0
        first = bad & (self.first_iter < 0)
        self.first_iter.copy_(torch.where(first, self.iteration, self.first_iter))
        self.first_flags.copy_(torch.where(first, flags, self.first_flags))
        self.first_local.copy_(torch.where(first, local, self.first_local))
        key = tuple(names)
        if key not in self.first_values:
            self.first_values[key] = torch.zeros_like(values)
            self.first_site[key] = torch.zeros((), dtype=torch.bool, device=self.device)
        self.first_values[key].copy_(torch.where(first, values, self.first_values[key]))
        self.first_site[key].logical_or_(first)
        self.skips.add_(bad.long())
        if self.policy == 'stop':
            self.halted.logical_or_(bad)
            mask = self.halted.clone()
        else:
            mask = bad
        if overflow is not None:
            mask = mask | overflow
        if sync:  # one read: raises (stop) or logs (skip) through the handler before the step
            count = self.report()[0]
            if count == 0 and not (overflow is not None and bool(overflow)):
                optimizer.step()
            else:
                optimizer.zero_grad(set_to_none=True)
        else:  # the fused optimizers skip the update (and its step count) where found_inf is non-zero
            optimizer.grad_scale = None
            optimizer.found_inf = mask.float()
            try:
                optimizer.step()
            finally:
                optimizer.found_inf = None

    def pending(self):
        """``(new bad steps, first bad iteration, (bad loss, bad grad), {names: values})`` since the last
        report, the flags of any process and the values of this one: one device-to-host copy."""
        count, first_iter, flags, _, values = self._unpack(self._packed().tolist())
        return count, first_iter, flags, values

    def _packed(self):
        """This process's record as one float vector: count, first iteration, flags (any process), flags (this
        process), then per loss-name group its "first bad here" flag and values."""
        return torch.cat([self.skips.view(1).float(), self.first_iter.view(1).float(), self.first_flags,
                          self.first_local] + [torch.cat([self.first_site[k].view(1).float(), v.float().view(-1)])
                                               for k, v in self.first_values.items()])

    def _unpack(self, packed):
        count, first_iter, flags, local = int(packed[0]), int(packed[1]), packed[2:4], packed[4:6]
        out, offset = {}, 6
        for names in self.first_values:
            if packed[offset] > 0:
                out.update(zip(names, packed[offset + 1:offset + 1 + len(names)]))
            offset += 1 + len(names)
        return count, first_iter, (flags[0] > 0, flags[1] > 0), (local[0] > 0, local[1] > 0), out

    def per_process(self):
        """Distributed: ``{rank: ((bad loss, bad grad), {names: values})}`` of the first bad step since the last
        report, gathered from every process (a collective: every process calls it, at the same report)."""
        packed = self._packed()
        gathered = [torch.zeros_like(packed) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, packed)
        return {rank: self._unpack(row.tolist())[3:] for rank, row in enumerate(gathered)}

    def report(self):
        """Read the device state (a sync point); returns ``(new_skips, first_iter, flags, values)``.

        When there are new bad steps: resets the since-last-report state (not ``halted``), adds them to
        ``reported_skips``, then calls ``handler`` (which raises for ``stop``). Distributed, every process finds
        the same count (the flags are all-reduced) and the handler gets ``ranks``: each process's flags and
        loss values at that step (:meth:`per_process`), so the message names the process that went bad.
        """
        result = self.pending()
        if result[0]:
            ranks = self.per_process() if self.distributed else None
            self.skips.zero_()
            self.first_iter.fill_(-1)
            for flag in self.first_site.values():
                flag.zero_()
            self.reported_skips += result[0]
            if self.handler is not None:
                self.handler(*result, ranks=ranks)
        return result
