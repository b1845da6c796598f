//! Prints the adapter's cooperative-matrix configurations and checks one 16×16×16 f16 × f16 + f32
//! multiply-add against the CPU (`cargo run --release -p engine --example coop_probe`).
use wgpu::util::DeviceExt;

const SRC: &str = r#"
enable f16;
enable wgpu_cooperative_matrix;
@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(32)
fn main() {
    let ma = coopLoadT<coop_mat16x16<f16, A>>(&a[0], 16u);
    let mb = coopLoad<coop_mat16x16<f16, B>>(&b[0], 16u);
    var mc = coop_mat16x16<f32, C>();
    mc = coopMultiplyAdd(ma, mb, mc);
    coopStore(mc, &c[0], 16u);
}
"#;

fn main() {
    pollster::block_on(run());
}

async fn run() {
    let inst = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = inst.enumerate_adapters(wgpu::Backends::all()).await;
    for a in &adapters {
        let i = a.get_info();
        println!(
            "adapter {} ({:?}, {:?}) coop feature {} sg {}..{}",
            i.name,
            i.backend,
            i.device_type,
            a.features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            i.subgroup_min_size,
            i.subgroup_max_size
        );
        for p in a.cooperative_matrix_properties() {
            println!("  {p:?}");
        }
    }
    let Some(adapter) = adapters.into_iter().find(|a| {
        a.features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && a.features().contains(wgpu::Features::SHADER_F16)
    }) else {
        println!("no adapter with cooperative matrices and f16");
        return;
    };
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: None,
            required_features: wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                | wgpu::Features::SHADER_F16,
            required_limits: adapter.limits(),
            // SAFETY: a probe; the shader below only uses documented cooperative-matrix calls.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .expect("device");
    let av: Vec<f32> = (0..256)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25)
        .collect();
    let bv: Vec<f32> = (0..256)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5)
        .collect();
    let ah: Vec<half::f16> = av.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bh: Vec<half::f16> = bv.iter().map(|&v| half::f16::from_f32(v)).collect();
    let mk = |d: &[u8], u| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: d,
            usage: u,
        })
    };
    let ba = mk(bytemuck::cast_slice(&ah), wgpu::BufferUsages::STORAGE);
    let bb = mk(bytemuck::cast_slice(&bh), wgpu::BufferUsages::STORAGE);
    let bc = mk(
        &[0u8; 1024],
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let rb = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SRC.into()),
    });
    let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: ba.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: bb.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: bc.as_entire_binding(),
            },
        ],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut p = enc.begin_compute_pass(&Default::default());
        p.set_pipeline(&pipe);
        p.set_bind_group(0, &bg, &[]);
        p.dispatch_workgroups(1, 1, 1);
    }
    enc.copy_buffer_to_buffer(&bc, 0, &rb, 0, 1024);
    queue.submit([enc.finish()]);
    rb.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let view = rb.slice(..).get_mapped_range().expect("map");
    let got: Vec<f32> = bytemuck::cast_slice(&view[..]).to_vec();
    // A row-major (i, k) at i*16+k; B column-major (k, j) at j*16+k; C column-major (i, j) at j*16+i.
    let mut maxerr = 0f32;
    for i in 0..16 {
        for j in 0..16 {
            let mut s = 0f32;
            for k in 0..16 {
                s += av[i * 16 + k] * bv[j * 16 + k];
            }
            maxerr = maxerr.max((s - got[j * 16 + i]).abs());
        }
    }
    println!(
        "16x16x16 f16*f16+f32: max |err| {maxerr} (c[0] {} c[17] {})",
        got[0], got[17]
    );
}
